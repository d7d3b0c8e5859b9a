# CUDA and NCCL support: the opt-in INTERFACE targets dualpipe::cuda and dualpipe::nccl.
#
#   DUALPIPE_ENABLE_CUDA   default ON when nvcc is found: enables the CUDA language (sm_90 unless
#                          CMAKE_CUDA_ARCHITECTURES says otherwise) and defines dualpipe::cuda
#                          (headers + CUDA::cudart, + CUDA::nvtx3 when the toolkit has it).
#   DUALPIPE_ENABLE_NCCL   default ON when CUDA is on and nccl.h / libnccl are found: defines dualpipe::nccl.
#   DUALPIPE_CUDART_STATIC default OFF: dualpipe::cuda links the shared CUDA runtime (CUDA::cudart). ON links
#                          CUDA::cudart_static instead, so that programs need no libcudart.so at run time
#                          (bench/gpu/make_gpu_kit.sh uses it to build programs that run on another machine).
#
# Sets DUALPIPE_HAS_CUDA and DUALPIPE_HAS_NCCL (ON/OFF) for the rest of the build, and prints one line each:
#   -- dualpipe: CUDA support ON/OFF (...)      -- dualpipe: NCCL support ON/OFF (...)
# Included from the top-level CMakeLists.txt (not a function: enable_language must run at directory scope).

include(CheckLanguage)
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  set(_dualpipe_cuda_default ON)
else()
  set(_dualpipe_cuda_default OFF)
endif()
option(DUALPIPE_ENABLE_CUDA "Build the CUDA device policy, communicators, example, tests and benchmarks" ${_dualpipe_cuda_default})

set(DUALPIPE_HAS_CUDA OFF)
set(DUALPIPE_HAS_NCCL OFF)
set(_dualpipe_cuda_why "DUALPIPE_ENABLE_CUDA=OFF")
set(_dualpipe_nccl_why "needs CUDA")

if(DUALPIPE_ENABLE_CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    message(FATAL_ERROR "dualpipe: DUALPIPE_ENABLE_CUDA=ON but no CUDA compiler (nvcc) was found; "
                        "put nvcc on PATH, set CMAKE_CUDA_COMPILER, or configure with -DDUALPIPE_ENABLE_CUDA=OFF")
  endif()
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES 90 CACHE STRING "CUDA architectures to build for (dualpipe default: 90, H100)")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  # CMake releases older than the toolkit do not know nvcc's C++20 flag: teach it, so that CUDA_STANDARD 20
  # works (newer CMake releases define these themselves and are left alone).
  if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
    set(CMAKE_CUDA20_COMPILE_FEATURES cuda_std_20)
  endif()
  set(DUALPIPE_HAS_CUDA ON)
  set(_dualpipe_cuda_why "nvcc ${CMAKE_CUDA_COMPILER_VERSION}, CUDA ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")

  add_library(dualpipe_cuda INTERFACE)
  add_library(dualpipe::cuda ALIAS dualpipe_cuda)
  set_target_properties(dualpipe_cuda PROPERTIES EXPORT_NAME cuda)
  option(DUALPIPE_CUDART_STATIC "dualpipe::cuda links the static CUDA runtime (CUDA::cudart_static)" OFF)
  if(DUALPIPE_CUDART_STATIC)
    # Also the runtime nvcc links into targets with CUDA sources (CMake's default is Static already): one
    # runtime per program, never the static and the shared one side by side.
    set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
    target_link_libraries(dualpipe_cuda INTERFACE dualpipe CUDA::cudart_static)
    string(APPEND _dualpipe_cuda_why ", static CUDA runtime")
  else()
    target_link_libraries(dualpipe_cuda INTERFACE dualpipe CUDA::cudart)
  endif()
  if(TARGET CUDA::nvtx3)
    target_link_libraries(dualpipe_cuda INTERFACE CUDA::nvtx3)
    target_compile_definitions(dualpipe_cuda INTERFACE DUALPIPE_HAS_NVTX=1)
    string(APPEND _dualpipe_cuda_why ", NVTX3")
  else()
    string(APPEND _dualpipe_cuda_why ", no NVTX3 (ranges compiled out)")
  endif()

  # ---- NCCL -------------------------------------------------------------------------------------------
  find_path(DUALPIPE_NCCL_INCLUDE_DIR nccl.h
            HINTS ENV NCCL_HOME ENV NCCL_ROOT ENV NCCL_DIR ${CUDAToolkit_INCLUDE_DIRS}
            PATH_SUFFIXES include)
  find_library(DUALPIPE_NCCL_LIBRARY NAMES nccl
               HINTS ENV NCCL_HOME ENV NCCL_ROOT ENV NCCL_DIR ${CUDAToolkit_LIBRARY_DIR}
               PATH_SUFFIXES lib lib64)
  if(DUALPIPE_NCCL_INCLUDE_DIR AND DUALPIPE_NCCL_LIBRARY)
    set(_dualpipe_nccl_default ON)
  else()
    set(_dualpipe_nccl_default OFF)
  endif()
  option(DUALPIPE_ENABLE_NCCL "Build the NCCL communicator (needs nccl.h and libnccl)" ${_dualpipe_nccl_default})
  if(DUALPIPE_ENABLE_NCCL)
    if(NOT (DUALPIPE_NCCL_INCLUDE_DIR AND DUALPIPE_NCCL_LIBRARY))
      message(FATAL_ERROR "dualpipe: DUALPIPE_ENABLE_NCCL=ON but nccl.h or libnccl was not found "
                          "(include: ${DUALPIPE_NCCL_INCLUDE_DIR}, library: ${DUALPIPE_NCCL_LIBRARY}); set NCCL_HOME "
                          "or configure with -DDUALPIPE_ENABLE_NCCL=OFF")
    endif()
    set(_dualpipe_nccl_version "unknown version")
    file(STRINGS ${DUALPIPE_NCCL_INCLUDE_DIR}/nccl.h _dualpipe_nccl_defs REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
    if(_dualpipe_nccl_defs)
      string(REGEX REPLACE ".*NCCL_MAJOR ([0-9]+).*" "\\1" _nccl_major "${_dualpipe_nccl_defs}")
      string(REGEX REPLACE ".*NCCL_MINOR ([0-9]+).*" "\\1" _nccl_minor "${_dualpipe_nccl_defs}")
      string(REGEX REPLACE ".*NCCL_PATCH ([0-9]+).*" "\\1" _nccl_patch "${_dualpipe_nccl_defs}")
      set(_dualpipe_nccl_version "${_nccl_major}.${_nccl_minor}.${_nccl_patch}")
    endif()
    add_library(dualpipe_nccl INTERFACE)
    add_library(dualpipe::nccl ALIAS dualpipe_nccl)
    set_target_properties(dualpipe_nccl PROPERTIES EXPORT_NAME nccl)
    target_include_directories(dualpipe_nccl SYSTEM INTERFACE ${DUALPIPE_NCCL_INCLUDE_DIR})
    target_link_libraries(dualpipe_nccl INTERFACE dualpipe_cuda ${DUALPIPE_NCCL_LIBRARY})
    set(DUALPIPE_HAS_NCCL ON)
    set(_dualpipe_nccl_why "NCCL ${_dualpipe_nccl_version}, ${DUALPIPE_NCCL_LIBRARY}")
  elseif(_dualpipe_nccl_default)
    set(_dualpipe_nccl_why "DUALPIPE_ENABLE_NCCL=OFF")
  else()
    set(_dualpipe_nccl_why "nccl.h or libnccl not found; set NCCL_HOME")
  endif()
elseif(NOT CMAKE_CUDA_COMPILER)
  set(_dualpipe_cuda_why "nvcc not found")
endif()

message(STATUS "dualpipe: CUDA support ${DUALPIPE_HAS_CUDA} (${_dualpipe_cuda_why})")
message(STATUS "dualpipe: NCCL support ${DUALPIPE_HAS_NCCL} (${_dualpipe_nccl_why})")

# dualpipe_cuda_target(<target>): our own targets with CUDA sources: C++20 for nvcc too, host warnings as
# errors where the toolkit's headers allow it.
function(dualpipe_cuda_target target)
  set_target_properties(${target} PROPERTIES CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON CUDA_EXTENSIONS OFF)
  # The same CUDA runtime as dualpipe::cuda links (CMake would add the static one for .cu files besides
  # the shared one: two runtimes in one program).
  if(DUALPIPE_CUDART_STATIC)
    set_target_properties(${target} PROPERTIES CUDA_RUNTIME_LIBRARY Static)
  else()
    set_target_properties(${target} PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --Werror=all-warnings>)
endfunction()

# dualpipe_mpi_target(<out-var>): the MPI target our NCCL bootstrap example may use: dualpipe::mpi when the
# build defines it, else MPI::MPI_CXX when MPI is found (the CXX component: this project enables no C
# language; only MPI's C API is called); empty otherwise. Call it late (from the folders of tests and
# examples), so that a dualpipe::mpi defined anywhere in the build is seen.
function(dualpipe_mpi_target out)
  if(TARGET dualpipe::mpi)
    set(${out} dualpipe::mpi PARENT_SCOPE)
    return()
  endif()
  if(NOT TARGET MPI::MPI_CXX)
    find_package(MPI QUIET COMPONENTS CXX)
  endif()
  if(TARGET MPI::MPI_CXX)
    set(${out} MPI::MPI_CXX PARENT_SCOPE)
  else()
    set(${out} "" PARENT_SCOPE)
  endif()
endfunction()
