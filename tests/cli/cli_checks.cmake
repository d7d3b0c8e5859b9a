# cmake -DCLI=<dualpipe-schedule> -DGOLDEN=<dir> -DWORK=<dir> -P cli_checks.cmake
file(MAKE_DIRECTORY ${WORK})
set(failures 0)
macro(fail msg)
  message(SEND_ERROR "${msg}")
  math(EXPR failures "${failures} + 1")
endmacro()

# 1. Every golden trace, reproduced byte for byte by --format trace.
file(GLOB golden_files ${GOLDEN}/*.txt)
list(LENGTH golden_files n_golden)
if(n_golden LESS 17)
  fail("expected at least 17 golden files in ${GOLDEN}, found ${n_golden}")
endif()
foreach(g IN LISTS golden_files)
  file(STRINGS ${g} header LIMIT_COUNT 1)
  string(REGEX MATCH "^# ([a-z0-9]+) ranks=([0-9]+) chunks=([0-9]+) mode=([a-z]+)$" _ "${header}")
  set(args --schedule ${CMAKE_MATCH_1} --ranks ${CMAKE_MATCH_2} --chunks ${CMAKE_MATCH_3} --format trace)
  if(CMAKE_MATCH_4 STREQUAL "forward")
    list(APPEND args --forward-only)
  endif()
  get_filename_component(name ${g} NAME)
  execute_process(COMMAND ${CLI} ${args} --output ${WORK}/${name} RESULT_VARIABLE rc)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/${name} ${g} RESULT_VARIABLE same)
  if(NOT rc EQUAL 0 OR NOT same EQUAL 0)
    fail("dualpipe-schedule ${args} does not reproduce ${name} (rc=${rc})")
  endif()
endforeach()

# 2. The summary of DualPipe 8x20 with F&B = 2.5 gives the spec's figures.
execute_process(COMMAND ${CLI} --schedule dualpipe --ranks 8 --chunks 20 --format summary --costs FB=2.5
                OUTPUT_VARIABLE out RESULT_VARIABLE rc)
foreach(line "schedule: dualpipe" "makespan: 59" "idle: 3.5 4 4.5 4.5 4.5 4.5 4 3.5" "peak_activations: 9 9 9 9 9 9 9 9")
  string(FIND "${out}" "${line}\n" at)
  if(at LESS 0 OR NOT rc EQUAL 0)
    fail("summary lacks '${line}':\n${out}")
  endif()
endforeach()

# 2b. --stage-costs: naming a stage with the base costs changes nothing; a cheaper stage changes the summary
#     (the simulator's own tests check the figures).
set(base_args --schedule dualpipev --ranks 2 --chunks 8 --format summary --costs F=1,B=2,W=1,FB=3)
execute_process(COMMAND ${CLI} ${base_args} OUTPUT_VARIABLE plain RESULT_VARIABLE rc1)
execute_process(COMMAND ${CLI} ${base_args} --stage-costs 0:F=1,B=2 OUTPUT_VARIABLE same_stage RESULT_VARIABLE rc2)
execute_process(COMMAND ${CLI} ${base_args} --stage-costs 0:B=1,W=0.5,FB=2 OUTPUT_VARIABLE cheap_stage
                RESULT_VARIABLE rc3)
if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0 OR NOT rc3 EQUAL 0 OR NOT plain STREQUAL same_stage
   OR plain STREQUAL cheap_stage)
  fail("--stage-costs: rc=${rc1}/${rc2}/${rc3}\n${plain}\n${same_stage}\n${cheap_stage}")
endif()

# 3. Every other format and schedule produces something, exit code 0.
foreach(fmt grid svg chrome summary)
  foreach(s dualpipe dualpipev 1f1b gpipe zb1p)
    execute_process(COMMAND ${CLI} --schedule ${s} --ranks 4 --chunks 8 --format ${fmt} --model async
                            --costs F=1,B=2,W=1,FB=2.5,latency=0.25
                    OUTPUT_VARIABLE out RESULT_VARIABLE rc)
    string(LENGTH "${out}" len)
    if(NOT rc EQUAL 0 OR len LESS 50)
      fail("--schedule ${s} --format ${fmt} failed (rc=${rc}, ${len} bytes)")
    endif()
  endforeach()
endforeach()
execute_process(COMMAND ${CLI} --compare --ranks 8 --chunks 20 OUTPUT_VARIABLE out RESULT_VARIABLE rc)
foreach(s dualpipe dualpipev 1f1b gpipe zb1p)
  string(REGEX MATCH "\n${s} +[0-9]" hit "${out}")
  if(NOT rc EQUAL 0 OR NOT hit)
    fail("--compare lacks a row for ${s}:\n${out}")
  endif()
endforeach()

# 4. Bad arguments: exit code 2, one line on stderr, nothing on stdout.
set(bad_cases
  "--schedule dualpipe --ranks 3 --chunks 12|ranks must be even"
  "--schedule dualpipe --ranks 4 --chunks 9|chunks must be even"
  "--schedule dualpipev --ranks 4 --chunks 7|at least 2 \\* ranks"
  "--schedule pipedream --ranks 4 --chunks 8|unknown schedule 'pipedream'"
  "--schedule 1f1b --ranks 0 --chunks 8|ranks must be at least 1"
  "--schedule 1f1b --ranks 4 --chunks 0|chunks must be at least 1"
  "--schedule 1f1b --ranks x --chunks 8|--ranks needs an integer"
  "--schedule 1f1b --ranks 4|--chunks C is required"
  "--schedule 1f1b --ranks 4 --chunks 8 --format png|--format must be"
  "--schedule 1f1b --ranks 4 --chunks 8 --model magic|magic"
  "--schedule 1f1b --ranks 4 --chunks 8 --costs F=-1|F"
  "--schedule 1f1b --ranks 4 --chunks 8 --costs Q=1|Q"
  "--bogus|unknown argument '--bogus'"
  "--compare --ranks 4 --chunks 0|chunks must be at least 1"
  "--compare --ranks 4 --chunks 8 --format svg|--compare prints its own table"
  "--schedule dualpipe --ranks 2000000000 --chunks 4|too large"
  "--schedule 1f1b --schedule gpipe --ranks 4 --chunks 8|--schedule given twice"
  "--schedule dualpipev --ranks 2 --chunks 8 --stage-costs 4:F=1|stage 4 but the model has stages 0 to 3"
  "--schedule dualpipe --ranks 2 --chunks 8 --format trace --stage-costs F=1|STAGE:KEY=V"
  "--compare --ranks 4 --chunks 8 --stage-costs 0:W=3|stage 0: cost W must not exceed B")
foreach(case IN LISTS bad_cases)
  string(FIND "${case}" "|" bar)
  string(SUBSTRING "${case}" 0 ${bar} cmdline)
  math(EXPR after "${bar} + 1")
  string(SUBSTRING "${case}" ${after} -1 expect)
  separate_arguments(parts UNIX_COMMAND "${cmdline}")
  execute_process(COMMAND ${CLI} ${parts} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
  string(REGEX MATCHALL "\n" newlines "${err}")
  list(LENGTH newlines n_lines)
  if(NOT rc EQUAL 2 OR NOT out STREQUAL "" OR NOT err MATCHES "${expect}" OR NOT n_lines EQUAL 1)
    fail("'${parts}': expected exit 2, empty stdout and one stderr line matching '${expect}'; got rc=${rc} stdout='${out}' stderr='${err}'")
  endif()
endforeach()

# 5. The README's pictures are what the program draws now.
foreach(pic "dualpipe;8;20;dualpipe_8x20.svg" "dualpipev;4;10;dualpipev_4x10.svg")
  list(GET pic 0 s)
  list(GET pic 1 p)
  list(GET pic 2 c)
  list(GET pic 3 file)
  execute_process(COMMAND ${CLI} --schedule ${s} --ranks ${p} --chunks ${c} --format svg --costs FB=2.5
                          --output ${WORK}/${file} RESULT_VARIABLE rc)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/${file} ${PICTURES}/${file} RESULT_VARIABLE same)
  if(NOT rc EQUAL 0 OR NOT same EQUAL 0)
    fail("${PICTURES}/${file} is stale: regenerate it with dualpipe-schedule --schedule ${s} --ranks ${p} --chunks ${c} --format svg --costs FB=2.5 --output ${PICTURES}/${file}")
  endif()
endforeach()

if(failures GREATER 0)
  message(FATAL_ERROR "${failures} check(s) failed")
endif()
message(STATUS "dualpipe-schedule: ${n_golden} golden traces reproduced, formats and errors checked")
