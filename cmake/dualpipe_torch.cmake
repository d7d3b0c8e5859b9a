# The opt-in libtorch adapter: INTERFACE target dualpipe::torch (dualpipe/torch.hpp), built when libtorch's
# CMake package (find_package(Torch)) is found, unless DUALPIPE_ENABLE_TORCH is OFF. Its tests (tests/torch),
# example (examples/torch_mlp) and benchmark (bench/torch) are built only with it.
# The option defaults to ON and means "when found", so that installing libtorch later needs no cache edit.
option(DUALPIPE_ENABLE_TORCH "Build the libtorch stage adapter dualpipe::torch when libtorch is found" ON)
if(DUALPIPE_ENABLE_TORCH)
  find_package(Torch QUIET)
endif()
if(DUALPIPE_ENABLE_TORCH AND Torch_FOUND)
  add_library(dualpipe_torch INTERFACE)
  add_library(dualpipe::torch ALIAS dualpipe_torch)
  set_target_properties(dualpipe_torch PROPERTIES EXPORT_NAME torch)
  target_link_libraries(dualpipe_torch INTERFACE dualpipe torch)
  install(TARGETS dualpipe_torch EXPORT dualpipeTorchTargets)
  install(EXPORT dualpipeTorchTargets NAMESPACE dualpipe:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/dualpipe)
  message(STATUS "dualpipe: libtorch support ON (Torch ${Torch_VERSION} at ${Torch_DIR})")
  include(${CMAKE_CURRENT_LIST_DIR}/dualpipe_torch_blas.cmake)  # says which BLAS libtorch calls
elseif(DUALPIPE_ENABLE_TORCH)
  message(STATUS "dualpipe: libtorch support OFF (libtorch not found: install libtorch-dev or set Torch_DIR)")
else()
  message(STATUS "dualpipe: libtorch support OFF (DUALPIPE_ENABLE_TORCH=OFF)")
endif()
