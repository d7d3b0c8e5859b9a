# dualpipe_add_subdirectories(): add every immediate subfolder that has a CMakeLists.txt, in name order.
# Each area of the project (tests/schedule, examples/cpu_demo, ...) owns its own folder and list file.
function(dualpipe_add_subdirectories)
  file(GLOB children LIST_DIRECTORIES true RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/*)
  list(SORT children)
  foreach(child IN LISTS children)
    if(child STREQUAL "consumer")
      continue()  # built by CI as a separate project
    endif()
    if(IS_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/${child} AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${child}/CMakeLists.txt)
      add_subdirectory(${child})
    endif()
  endforeach()
endfunction()
