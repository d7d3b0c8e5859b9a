// dualpipe/torch.hpp: the libtorch part (CMake target and package component dualpipe::torch).
#pragma once

#include "dualpipe/dualpipe.hpp"
#include "dualpipe/torch/blas.hpp"
#include "dualpipe/torch/deferred_linear.hpp"
#include "dualpipe/torch/stage.hpp"
#include "dualpipe/torch/tensors_stage.hpp"
