// The umbrella header must stay free of CUDA, NCCL and MPI headers (they are opt-in): this translation
// unit includes it alone and fails to compile if any of their version macros appears.
#include "dualpipe/dualpipe.hpp"

#if defined(CUDART_VERSION) || defined(__CUDA_RUNTIME_H__) || defined(__CUDA_RUNTIME_API_H__)
#error "dualpipe/dualpipe.hpp pulls in a CUDA runtime header"
#endif
#if defined(NCCL_MAJOR)
#error "dualpipe/dualpipe.hpp pulls in nccl.h"
#endif
#if defined(MPI_VERSION)
#error "dualpipe/dualpipe.hpp pulls in mpi.h"
#endif

// Referenced by test_policy.cpp so that this file is linked (and so compiled) for sure.
int dualpipe_umbrella_is_clean() { return 1; }
