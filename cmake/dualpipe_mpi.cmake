# Included from the top-level CMakeLists.txt.
# ---- Opt-in MPI part: dualpipe::mpi (dualpipe/mpi.hpp), when MPI is found ----------------------------
set(dualpipe_mpi_disabled_by_user OFF)
if(DEFINED DUALPIPE_ENABLE_MPI AND NOT DUALPIPE_ENABLE_MPI)
  set(dualpipe_mpi_disabled_by_user ON)
else()
  set(MPI_DETERMINE_LIBRARY_VERSION TRUE)  # so that the configure line and the test flags know Open MPI
  set(MPI_CXX_SKIP_MPICXX TRUE)            # the C API only: no deprecated C++ bindings
  find_package(MPI COMPONENTS CXX QUIET)
endif()
if(MPI_CXX_FOUND OR DEFINED DUALPIPE_ENABLE_MPI)
  option(DUALPIPE_ENABLE_MPI "Build dualpipe::mpi (MpiCommunicator) and its tests, programs and benchmark" ${MPI_CXX_FOUND})
else()
  set(DUALPIPE_ENABLE_MPI OFF)  # not cached: a later configure, after MPI is installed, looks again
endif()
if(DUALPIPE_ENABLE_MPI AND NOT MPI_CXX_FOUND)
  message(FATAL_ERROR "DUALPIPE_ENABLE_MPI is ON but no MPI was found: install an MPI (e.g. Debian's "
                      "libopenmpi-dev and openmpi-bin) or configure with -DDUALPIPE_ENABLE_MPI=OFF")
endif()
if(DUALPIPE_ENABLE_MPI)
  add_library(dualpipe_mpi INTERFACE)
  add_library(dualpipe::mpi ALIAS dualpipe_mpi)
  set_target_properties(dualpipe_mpi PROPERTIES EXPORT_NAME mpi)  # installed as dualpipe::mpi too
  target_link_libraries(dualpipe_mpi INTERFACE dualpipe MPI::MPI_CXX)
  target_compile_definitions(dualpipe_mpi INTERFACE DUALPIPE_HAS_MPI=1)
  string(REGEX MATCH "^[^,]*" dualpipe_mpi_library "${MPI_CXX_LIBRARY_VERSION_STRING}")
  if(NOT dualpipe_mpi_library)
    set(dualpipe_mpi_library "MPI ${MPI_CXX_VERSION}")
  endif()
  message(STATUS "dualpipe: MPI support ON (${dualpipe_mpi_library}, ${MPIEXEC_EXECUTABLE})")
  # Flags our MPI tests run with: Open MPI refuses root and more ranks than cores without them, and its
  # shared-memory single-copy path (CMA) fails in containers that forbid ptrace between processes.
  set(dualpipe_mpiexec_flags ${MPIEXEC_PREFLAGS})
  if(MPI_CXX_LIBRARY_VERSION_STRING MATCHES "Open MPI")
    list(APPEND dualpipe_mpiexec_flags --oversubscribe --mca btl_vader_single_copy_mechanism none)
    execute_process(COMMAND id -u OUTPUT_VARIABLE dualpipe_uid OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(dualpipe_uid STREQUAL "0")
      list(APPEND dualpipe_mpiexec_flags --allow-run-as-root)
    endif()
  endif()
  set(DUALPIPE_MPIEXEC_PREFLAGS "${dualpipe_mpiexec_flags}" CACHE STRING
      "Flags after '${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} N' for the MPI tests")
elseif(MPI_CXX_FOUND OR dualpipe_mpi_disabled_by_user)
  message(STATUS "dualpipe: MPI support OFF (disabled with DUALPIPE_ENABLE_MPI=OFF)")
else()
  message(STATUS "dualpipe: MPI support OFF (no MPI found; install libopenmpi-dev and openmpi-bin)")
endif()
