// dualpipe/torch/blas.hpp: which BLAS library this process's libtorch calls, and its thread count.
//
// Debian's libtorch links `libblas.so.3`, which the system's alternatives resolve at run time: to the netlib
// reference BLAS when no optimised one is installed (about 30x slower on the example's stage), to OpenBLAS
// after `apt-get install libopenblas0-pthread`. The configure step says what it found; a program says what
// it really got with describe_blas(loaded_blas()).
//
// libtorch's at::set_num_threads sizes OpenMP (and MKL), not OpenBLAS: an OpenBLAS built with pthreads starts
// one thread per core for each product, which fights the pipeline's rank threads for the cores.
// set_blas_threads(1) keeps every product on its calling thread.
#pragma once

#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <string>

namespace dualpipe {

/// What loaded_blas() found.
struct BlasInfo {
  /// "OpenBLAS", "BLIS", "MKL", "FlexiBLAS", "ATLAS", "reference BLAS (netlib)", or "unknown".
  std::string name;
  /// The file that `sgemm_` comes from, links resolved (e.g. .../openblas-pthread/libblas.so.3); empty where
  /// no such symbol is exported (a libtorch with its BLAS linked in, as PyTorch's own wheels have).
  std::string path;
  /// The library's own build string where it has one (OpenBLAS: version, target, thread model).
  std::string config;
  /// The unoptimised reference implementation.
  [[nodiscard]] bool is_reference() const noexcept { return name == "reference BLAS (netlib)"; }
};

namespace detail {

/// A symbol of `handle` (or of the whole process: RTLD_DEFAULT) as a function pointer; null when absent.
template <class F>
F* symbol(void* handle, const char* name) {
  return reinterpret_cast<F*>(::dlsym(handle, name));
}

}  // namespace detail

/// The BLAS whose `sgemm_` this process calls: the object that the dynamic loader resolves it to (dladdr),
/// named by the symbols that each implementation alone exports.
inline BlasInfo loaded_blas() {
  BlasInfo info;
  void* gemm = ::dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info where{};
  if (gemm == nullptr || ::dladdr(gemm, &where) == 0 || where.dli_fname == nullptr) {
    info.name = "unknown";  // no exported sgemm_: a BLAS linked into libtorch with hidden symbols
    return info;
  }
  char resolved[PATH_MAX];
  info.path = ::realpath(where.dli_fname, resolved) ? resolved : where.dli_fname;
  // That object and its dependencies (Debian's OpenBLAS libblas.so.3 may forward to libopenblas.so.0).
  void* handle = ::dlopen(where.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) handle = RTLD_DEFAULT;
  if (auto* config = detail::symbol<char*()>(handle, "openblas_get_config")) {
    info.name = "OpenBLAS";
    info.config = config();
  } else if (auto* version = detail::symbol<const char*()>(handle, "bli_info_get_version_str")) {
    info.name = "BLIS";
    info.config = version();
  } else if (detail::symbol<void()>(handle, "mkl_get_version_string") != nullptr) {
    info.name = "MKL";
  } else if (detail::symbol<void()>(handle, "flexiblas_get_num_threads") != nullptr) {
    info.name = "FlexiBLAS";
  } else if (detail::symbol<void()>(handle, "ATL_buildinfo") != nullptr) {
    info.name = "ATLAS";
  } else if (info.path.find("/blas/libblas.so") != std::string::npos) {
    info.name = "reference BLAS (netlib)";  // Debian's libblas3 exports only the standard routines
  } else {
    info.name = "unknown";
  }
  if (handle != RTLD_DEFAULT) ::dlclose(handle);
  return info;
}

/// One line for a program's output: `blas: OpenBLAS (<path>; <config>)`, with a hint for the slow one.
inline std::string describe_blas(const BlasInfo& info) {
  std::string s = "blas: " + info.name;
  if (!info.path.empty() || !info.config.empty()) {
    s += " (" + (info.path.empty() ? std::string("linked in") : info.path);
    if (!info.config.empty()) s += "; " + info.config;
    s += ")";
  }
  if (info.is_reference())
    s += " -- the unoptimised reference, about 30x slower: install an optimised one (Debian: apt-get install "
         "libopenblas0-pthread, which .ci/deps does)";
  return s;
}

/// Sets the BLAS's own thread count where it has a knob (OpenBLAS, BLIS, FlexiBLAS; MKL follows
/// at::set_num_threads already). Returns whether one was set.
inline bool set_blas_threads(int threads) {
  if (auto* f = detail::symbol<void(int)>(RTLD_DEFAULT, "openblas_set_num_threads")) {
    f(threads);
    return true;
  }
  if (auto* f = detail::symbol<void(long)>(RTLD_DEFAULT, "bli_thread_set_num_threads")) {
    f(threads);
    return true;
  }
  if (auto* f = detail::symbol<void(int)>(RTLD_DEFAULT, "flexiblas_set_num_threads")) {
    f(threads);
    return true;
  }
  return false;
}

}  // namespace dualpipe
