// The cuBLAS half of the emulator (see cuda_emulator.hpp): handles bound to a stream, and cublasGemmEx with
// fp32 or bf16 inputs and outputs and fp32 accumulation, as a naive loop in stream order (slow: for small
// problems). The handle's stream is the legacy one until cublasSetStream.
#include <cublas_v2.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_emulator.hpp"

struct cublasContext {
  cudaStream_t stream = nullptr;
  int device = 0;
};

namespace {

using cuda_emulator::bf16_to_float;
using cuda_emulator::float_to_bf16;
std::size_t type_bytes(cudaDataType t) { return t == CUDA_R_32F ? 4 : t == CUDA_R_16BF ? 2 : 0; }
float load(cudaDataType t, const void* p, std::size_t i) {
  return t == CUDA_R_32F ? static_cast<const float*>(p)[i] : bf16_to_float(static_cast<const std::uint16_t*>(p)[i]);
}
void store(cudaDataType t, void* p, std::size_t i, float v) {
  if (t == CUDA_R_32F) static_cast<float*>(p)[i] = v;
  else static_cast<std::uint16_t*>(p)[i] = float_to_bf16(v);
}

}  // namespace

extern "C" {

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext;
  cudaGetDevice(&(*handle)->device);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes > 0 && !cuda_emulator::is_device_memory(workspace, bytes, handle->device))
    return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}
const char* CUBLASWINAPI cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}
const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an unsupported value or parameter was passed to the function";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    default: return "unknown cuBLAS status";
  }
}

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                         int lda, const void* B, cudaDataType Btype, int ldb, const void* beta, void* C,
                                         cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                         cublasGemmAlgo_t /*algo*/) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (computeType != CUBLAS_COMPUTE_32F || Atype != Btype || type_bytes(Atype) == 0 || type_bytes(Ctype) == 0)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (m < 0 || n < 0 || k < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m) return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);  // host pointer mode
  const auto M = static_cast<std::size_t>(m), N = static_cast<std::size_t>(n), K = static_cast<std::size_t>(k);
  const auto LA = static_cast<std::size_t>(lda), LB = static_cast<std::size_t>(ldb), LC = static_cast<std::size_t>(ldc);
  // Column-major extents, for the race checker.
  const std::size_t a_elems = K == 0 ? 0 : (ta ? LA * (M - 1) + K : LA * (K - 1) + M);
  const std::size_t b_elems = K == 0 ? 0 : (tb ? LB * (K - 1) + N : LB * (N - 1) + K);
  const std::size_t c_elems = LC * (N - 1) + M;
  std::vector<cuda_emulator::Access> accesses{{A, a_elems * type_bytes(Atype), false},
                                              {B, b_elems * type_bytes(Btype), false},
                                              {C, c_elems * type_bytes(Ctype), true}};
  const cudaError_t e = cuda_emulator::launch(
      handle->stream,
      [=] {
        for (std::size_t j = 0; j < N; ++j) {
          for (std::size_t i = 0; i < M; ++i) {
            float acc = 0;
            for (std::size_t l = 0; l < K; ++l)
              acc += load(Atype, A, ta ? l + i * LA : i + l * LA) * load(Btype, B, tb ? j + l * LB : l + j * LB);
            const std::size_t c = i + j * LC;
            store(Ctype, C, c, a * acc + (b == 0.0f ? 0.0f : b * load(Ctype, C, c)));
          }
        }
      },
      "cublasGemmEx", std::move(accesses));
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"
