# The opt-in libtorch adapter: INTERFACE target dualpipe::torch (dualpipe/torch.hpp), built when libtorch's
# CMake package (find_package(Torch)) is found, unless DUALPIPE_ENABLE_TORCH is OFF, and installed as the
# package component torch (top-level CMakeLists.txt). Its tests (tests/torch), example (examples/torch_mlp)
# and benchmark (bench/torch) are built only with it.
# The option defaults to ON and means "when found", so that installing libtorch later needs no cache edit.
option(DUALPIPE_ENABLE_TORCH "Build the libtorch stage adapter dualpipe::torch when libtorch is found" ON)
if(DUALPIPE_ENABLE_TORCH)
  get_directory_property(dualpipe_imported_before IMPORTED_TARGETS)
  find_package(Torch QUIET)
  # Under add_subdirectory(dualpipe), the consumer's targets that link dualpipe::torch evaluate libtorch's
  # generator expressions ($<TARGET_PROPERTY:torch_cpu,...>) in their own folders, where imported targets
  # made here are unknown: make the ones find_package(Torch) made global.
  get_directory_property(dualpipe_imported_after IMPORTED_TARGETS)
  if(Torch_FOUND AND NOT PROJECT_IS_TOP_LEVEL)
    list(REMOVE_ITEM dualpipe_imported_after ${dualpipe_imported_before})
    foreach(target IN LISTS dualpipe_imported_after)
      set_target_properties(${target} PROPERTIES IMPORTED_GLOBAL TRUE)
    endforeach()
  endif()
endif()
if(DUALPIPE_ENABLE_TORCH AND Torch_FOUND)
  add_library(dualpipe_torch INTERFACE)
  add_library(dualpipe::torch ALIAS dualpipe_torch)
  set_target_properties(dualpipe_torch PROPERTIES EXPORT_NAME torch)
  target_link_libraries(dualpipe_torch INTERFACE dualpipe torch)
  message(STATUS "dualpipe: libtorch support ON (Torch ${Torch_VERSION} at ${Torch_DIR})")
  include(${CMAKE_CURRENT_LIST_DIR}/dualpipe_torch_blas.cmake)  # says which BLAS libtorch calls
elseif(DUALPIPE_ENABLE_TORCH)
  message(STATUS "dualpipe: libtorch support OFF (libtorch not found: install libtorch-dev or set Torch_DIR)")
else()
  message(STATUS "dualpipe: libtorch support OFF (DUALPIPE_ENABLE_TORCH=OFF)")
endif()
