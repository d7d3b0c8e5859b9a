// dualpipe/cuda.hpp: the opt-in CUDA part (link dualpipe::cuda): errors and check macros, RAII streams
// and events, device memory, NVTX ranges, the CUDA device policy and the one-process communicator.
// cuBLAS helpers (dualpipe/cuda/cublas.hpp) need CUDA::cublas and are included separately; NCCL is
// dualpipe/nccl.hpp.
#pragma once

#include "dualpipe/cuda/device.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/local_communicator.hpp"
#include "dualpipe/cuda/memory.hpp"
#include "dualpipe/cuda/nvtx.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/dualpipe.hpp"
