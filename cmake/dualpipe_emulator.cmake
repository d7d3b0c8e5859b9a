# The CUDA emulator (tests/emulator/): the CUDA runtime, cuBLAS and NCCL functions that dualpipe uses, on host
# threads, checked for ordering, capture and memory errors (tests/emulator/cuda_emulator.hpp). A program built
# against it runs its CUDA code where there is no GPU. For testing only: never installed, never exported.
#
#   dualpipe_add_emulated_executable(<name> SOURCES <files...> [LIBS <targets...>])
#
# builds <build>/bin/<name> from host C++ sources (the host versions of its kernels among them, written
# against cuda_emulator.hpp) with the host compiler, linked to the emulator instead of libcudart, cuBLAS and
# NCCL, and to dualpipe, with the project's warnings. Needs the CUDA toolkit's headers (DUALPIPE_HAS_CUDA);
# the NCCL half is there when NCCL's header is (DUALPIPE_HAS_NCCL). The tests (tests/emulated), the GPU
# benchmarks (bench/gpu) and the cuBLAS example (examples/cuda_mlp) build their emulated programs with it.
include_guard(GLOBAL)

set(DUALPIPE_EMULATOR_DIR ${CMAKE_CURRENT_LIST_DIR}/../tests/emulator)
cmake_path(NORMAL_PATH DUALPIPE_EMULATOR_DIR)

# The emulator library itself, made by the first emulated program (so that a build without any has none).
function(_dualpipe_cuda_emulator_library)
  if(TARGET dualpipe_cuda_emulator)
    return()
  endif()
  set(dir ${DUALPIPE_EMULATOR_DIR})
  add_library(dualpipe_cuda_emulator STATIC ${dir}/cuda_runtime.cpp ${dir}/cublas.cpp)
  if(DUALPIPE_HAS_NCCL)
    target_sources(dualpipe_cuda_emulator PRIVATE ${dir}/nccl.cpp)
    target_include_directories(dualpipe_cuda_emulator SYSTEM PUBLIC ${DUALPIPE_NCCL_INCLUDE_DIR})
  endif()
  target_include_directories(dualpipe_cuda_emulator SYSTEM PUBLIC ${CUDAToolkit_INCLUDE_DIRS})
  target_include_directories(dualpipe_cuda_emulator PUBLIC ${dir})
  target_link_libraries(dualpipe_cuda_emulator PUBLIC Threads::Threads PRIVATE dualpipe_project_options)
  target_compile_features(dualpipe_cuda_emulator PUBLIC cxx_std_20)
  if(TARGET CUDA::nvtx3)
    # NVTX is header-only: without a tool attached its ranges cost a branch.
    target_link_libraries(dualpipe_cuda_emulator PUBLIC CUDA::nvtx3)
    target_compile_definitions(dualpipe_cuda_emulator PUBLIC DUALPIPE_HAS_NVTX=1)
  endif()
endfunction()

function(dualpipe_add_emulated_executable name)
  cmake_parse_arguments(arg "" "" "SOURCES;LIBS" ${ARGN})
  if(NOT DUALPIPE_HAS_CUDA)
    message(FATAL_ERROR "dualpipe_add_emulated_executable(${name}): the CUDA emulator needs the CUDA toolkit's "
                        "headers (DUALPIPE_HAS_CUDA is off); check DUALPIPE_HAS_CUDA before calling it")
  endif()
  if(NOT arg_SOURCES)
    message(FATAL_ERROR "dualpipe_add_emulated_executable(${name}): no SOURCES")
  endif()
  _dualpipe_cuda_emulator_library()
  add_executable(${name} ${arg_SOURCES})
  target_link_libraries(${name} PRIVATE dualpipe::dualpipe dualpipe_cuda_emulator dualpipe_project_options ${arg_LIBS})
endfunction()
