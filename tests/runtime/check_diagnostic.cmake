# cmake -DCXX=<compiler> -DINCLUDE=<include dir> -DSOURCE=<file> -DEXPECT=<text> -P check_diagnostic.cmake
# A compile-fail check: SOURCE must compile with -DDUALPIPE_GOOD_STAGE (a control: the includes and the
# rest of the file are fine; the macro completes whichever type the file leaves short) and must FAIL
# without it, with EXPECT in the compiler's output.
foreach(var CXX INCLUDE SOURCE EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_diagnostic.cmake: -D${var}=... is required")
  endif()
endforeach()
set(flags -std=c++20 -fsyntax-only -I${INCLUDE})

execute_process(COMMAND ${CXX} ${flags} -DDUALPIPE_GOOD_STAGE ${SOURCE}
                RESULT_VARIABLE good_rc OUTPUT_VARIABLE good_out ERROR_VARIABLE good_out)
if(NOT good_rc EQUAL 0)
  message(FATAL_ERROR "the control (-DDUALPIPE_GOOD_STAGE: every member there) does not compile:\n${good_out}")
endif()

execute_process(COMMAND ${CXX} ${flags} ${SOURCE}
                RESULT_VARIABLE bad_rc OUTPUT_VARIABLE bad_out ERROR_VARIABLE bad_out)
if(bad_rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must not")
endif()
string(FIND "${bad_out}" "${EXPECT}" at)
if(at LESS 0)
  message(FATAL_ERROR "the compiler's output does not contain \"${EXPECT}\":\n${bad_out}")
endif()
message(STATUS "failed to compile as expected, with \"${EXPECT}\"")
