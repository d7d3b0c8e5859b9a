// dualpipe/dualpipe.hpp: the umbrella header. Pulls in no CUDA, MPI or NCCL header; those are opt-in
// (dualpipe/cuda.hpp, dualpipe/nccl.hpp, dualpipe/mpi.hpp).
#pragma once

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/trace.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/dualpipev.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/schedule/zb1p.hpp"
