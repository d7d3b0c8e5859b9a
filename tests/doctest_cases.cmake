# Every doctest case of a test program as a CTest test of its own, named <program>:<case name>, so that
# `ctest -R` picks one case, `ctest -N` lists them all, and a failure names its case.
#
#   dualpipe_add_doctest_cases(<target> [LABELS <labels...>] [TIMEOUT <s>] [PROPERTIES <name> <value>...])
#
# After each link (POST_BUILD) the program lists its cases (--list-test-cases) into <target>_cases.cmake;
# CTest reads that list through a file that this function writes at configure time, and registers each case
# as `<program> --test-case=<exact name>` with the given labels, timeout and properties (for example
# SKIP_RETURN_CODE 77 for a program that skips without a GPU). Before the program is built, one test
# <program>:NOT_BUILT stands for its cases and fails, saying so.
#
# The same file is the script behind both steps (cmake -P, MODE=list or MODE=not_built).

if(CMAKE_SCRIPT_MODE_FILE)
  cmake_minimum_required(VERSION 3.20)  # the project's policies (IN_LIST) in script mode too
  if(MODE STREQUAL "not_built")
    message(FATAL_ERROR "${PROGRAM} is not built, so its test cases are unknown: build it first "
                        "(cmake --build <build dir> --target ${TARGET})")
  endif()
  # MODE=list: PROGRAM, OUT. Writes one `_dualpipe_case([==[<name>]==])` line per case.
  execute_process(COMMAND "${PROGRAM}" --list-test-cases --no-version=true RESULT_VARIABLE rc
                  OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  if(NOT rc STREQUAL "0")
    message(FATAL_ERROR "${PROGRAM} --list-test-cases failed (${rc}):\n${out}\n${err}")
  endif()
  # The console reporter prints the names between the line "listing all test case names" (and a rule
  # of '=') and the closing rule.
  string(REPLACE ";" "\\;" out "${out}")
  string(REPLACE "\n" ";" lines "${out}")
  set(state before)
  set(text "# Written by tests/doctest_cases.cmake after ${PROGRAM} was built: its test cases.\n")
  set(count 0)
  set(seen "")
  foreach(line IN LISTS lines)
    if(state STREQUAL "before")
      if(line MATCHES "listing all test case names")
        set(state rule)
      endif()
    elseif(state STREQUAL "rule")
      set(state names)
    elseif(line MATCHES "^=+$")
      break()
    elseif(NOT line STREQUAL "")
      string(REPLACE "\\;" ";" line "${line}")
      if(line MATCHES "[;]|\\]==\\]")
        message(FATAL_ERROR "test case name '${line}' holds ';' or ']==]', which the case list cannot hold")
      endif()
      if(NOT line IN_LIST seen)  # doctest allows a name twice; --test-case=<name> runs both as one test
        list(APPEND seen "${line}")
        string(APPEND text "_dualpipe_case([==[${line}]==])\n")
        math(EXPR count "${count} + 1")
      endif()
    endif()
  endforeach()
  if(count EQUAL 0)
    message(FATAL_ERROR "${PROGRAM} --list-test-cases listed no test case:\n${out}")
  endif()
  file(WRITE "${OUT}" "${text}")
  return()
endif()

set(_dualpipe_doctest_cases_script ${CMAKE_CURRENT_LIST_FILE})

function(dualpipe_add_doctest_cases target)
  cmake_parse_arguments(arg "" "TIMEOUT" "LABELS;PROPERTIES" ${ARGN})
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 300)
  endif()
  set(cases ${CMAKE_CURRENT_BINARY_DIR}/${target}_cases.cmake)
  set(ctest_file ${CMAKE_CURRENT_BINARY_DIR}/${target}_ctest.cmake)
  add_custom_command(TARGET ${target} POST_BUILD
                     COMMAND ${CMAKE_COMMAND} -DMODE=list -DPROGRAM=$<TARGET_FILE:${target}> -DOUT=${cases}
                             -P ${_dualpipe_doctest_cases_script}
                     COMMENT "Listing the test cases of ${target}" VERBATIM)

  # Each property as a bracket argument, so that lists (LABELS a;b) and regular expressions pass unchanged.
  set(props "LABELS [==[${arg_LABELS}]==] TIMEOUT ${arg_TIMEOUT}")
  # A case that matches no name (a filter gone wrong) must not pass: doctest then runs 0 test cases.
  set(fail_regex "test cases: +0 [|]")
  set(rest ${arg_PROPERTIES})
  while(rest)
    list(POP_FRONT rest name value)
    if(name STREQUAL "FAIL_REGULAR_EXPRESSION")
      set(fail_regex "${fail_regex};${value}")
    else()
      string(APPEND props " ${name} [==[${value}]==]")
    endif()
  endwhile()
  string(APPEND props " FAIL_REGULAR_EXPRESSION [==[${fail_regex}]==]")

  file(GENERATE OUTPUT ${ctest_file} CONTENT "# Written by dualpipe_add_doctest_cases (tests/doctest_cases.cmake).
if(EXISTS [==[${cases}]==])
  function(_dualpipe_case name)
    # doctest splits --test-case at commas unless escaped; the name is matched whole.
    string(REPLACE \",\" \"\\\\,\" filter \"\${name}\")
    add_test(\"${target}:\${name}\" [==[$<TARGET_FILE:${target}>]==] \"--test-case=\${filter}\")
    set_tests_properties(\"${target}:\${name}\" PROPERTIES ${props})
  endfunction()
  include([==[${cases}]==])
else()
  add_test([==[${target}:NOT_BUILT]==] [==[${CMAKE_COMMAND}]==] -DMODE=not_built
           [==[-DPROGRAM=$<TARGET_FILE:${target}>]==] -DTARGET=${target} -P [==[${_dualpipe_doctest_cases_script}]==])
  set_tests_properties([==[${target}:NOT_BUILT]==] PROPERTIES LABELS [==[${arg_LABELS}]==])
endif()
")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${ctest_file})
endfunction()
