// Check macros: the message names the library, the code's name and number, the library's own text, the
// call and its file and line. Runs without a GPU (the error tables need no device).
#include <doctest/doctest.h>

#include <string>

#include "dualpipe/cuda/cublas.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;

namespace {
cudaError_t returns(cudaError_t e) { return e; }
cublasStatus_t returns_status(cublasStatus_t s) { return s; }
}  // namespace

TEST_CASE("Cuda.Error.Format.AllParts") {
  const std::string m = detail::format_library_error("CUDA", 2, "cudaErrorMemoryAllocation", "out of memory",
                                                     "cudaMalloc(&p, n)", "x.cpp", 7);
  CHECK(m == "CUDA error 2 (cudaErrorMemoryAllocation): out of memory in `cudaMalloc(&p, n)` at x.cpp:7");
  const std::string bare = detail::format_library_error("NCCL", 9, "", "", "", nullptr, 0);
  CHECK(bare == "NCCL error 9 (unknown): no description");
}

TEST_CASE("Cuda.Error.Check.ThrowsWithCudaText") {
  int line = 0;
  try {
    line = __LINE__ + 1;
    DUALPIPE_CUDA_CHECK(returns(cudaErrorInvalidValue));
    FAIL("no exception");
  } catch (const CudaError& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(e.code() == static_cast<int>(cudaErrorInvalidValue));
    CHECK(e.library() == "CUDA");
    CHECK(contains(m, "CUDA error 1 (cudaErrorInvalidValue): "));
    CHECK(contains(m, cudaGetErrorString(cudaErrorInvalidValue)));
    CHECK(contains(m, "`returns(cudaErrorInvalidValue)`"));
    CHECK(contains(m, "test_errors.cpp:" + std::to_string(line)));
  }
  // No exception for success; with a working runtime the last-error state is clean after a throw (without
  // a driver, the runtime's initialisation error is sticky and is all cudaGetLastError can say).
  CHECK_NOTHROW(DUALPIPE_CUDA_CHECK(returns(cudaSuccess)));
  if (cuda_device_available()) CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("Cuda.Error.Check.RealCallFails") {
  // Device 1000 exists nowhere: without a driver the runtime says so, with one it says the ordinal is bad.
  // Either way the message carries CUDA's own text for the code it returned.
  try {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(1000));
    FAIL("cudaSetDevice(1000) succeeded");
  } catch (const CudaError& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(e.code() != 0);
    CHECK(contains(m, cudaGetErrorString(static_cast<cudaError_t>(e.code()))));
    CHECK(contains(m, "cudaSetDevice(1000)"));
  }
}

TEST_CASE("Cuda.Error.Cublas.StatusText") {
  try {
    DUALPIPE_CUBLAS_CHECK(returns_status(CUBLAS_STATUS_INVALID_VALUE));
    FAIL("no exception");
  } catch (const CudaError& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(e.library() == "cuBLAS");
    CHECK(e.code() == static_cast<int>(CUBLAS_STATUS_INVALID_VALUE));
    CHECK(contains(m, "cuBLAS error 7 (CUBLAS_STATUS_INVALID_VALUE): "));
    CHECK(contains(m, cublasGetStatusString(CUBLAS_STATUS_INVALID_VALUE)));
    CHECK(contains(m, "test_errors.cpp:"));
  }
  CHECK_NOTHROW(DUALPIPE_CUBLAS_CHECK(returns_status(CUBLAS_STATUS_SUCCESS)));
}

TEST_CASE("Cuda.NoDevice.RaiiThrowsClearly") {
  if (cuda_device_available()) {
    MESSAGE("a CUDA device is present: this case is for machines without one");
    return;
  }
  CHECK(cuda_device_count() == 0);
  CHECK_THROWS_AS(Stream(), CudaError);
  CHECK_THROWS_AS(Event(), CudaError);
}
