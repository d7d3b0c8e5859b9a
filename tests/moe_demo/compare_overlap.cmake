# Runs dualpipe-moe-demo with overlap on and with overlap off and checks that both pass and print the same
# loss_sum, grad_norm and max_rel_err for every schedule: the phase interleaving changes when the work
# runs, never its numbers.
#   cmake -DDEMO=<program> -P compare_overlap.cmake
function(numbers out overlap)
  execute_process(COMMAND ${DEMO} --ranks 2 --ep 2 --repeats 2 --overlap ${overlap} RESULT_VARIABLE rc
                  OUTPUT_VARIABLE text ERROR_VARIABLE err TIMEOUT 240)
  if(NOT rc STREQUAL "0")
    message(FATAL_ERROR "overlap ${overlap}: exit ${rc}\n${text}\n${err}")
  endif()
  string(REGEX MATCHALL "result: [^\n]*" lines "${text}")
  set(found "")
  foreach(line IN LISTS lines)
    string(REGEX MATCH "schedule=[^ ]+ .* loss_sum=[^ ]+ grad_norm=[^ ]+ max_rel_err=[^ ]+" keep "${line}")
    string(REGEX REPLACE " overlap=[^ ]+" "" keep "${keep}")
    list(APPEND found "${keep}")
  endforeach()
  set(${out} "${found}" PARENT_SCOPE)
endfunction()
numbers(on on)
numbers(off off)
list(LENGTH on n)
if(n EQUAL 0 OR NOT on STREQUAL off)
  message(FATAL_ERROR "overlap on and off differ:\n  on:  ${on}\n  off: ${off}")
endif()
message("ok: ${n} schedules, the same numbers with overlap on and off:\n${on}")
