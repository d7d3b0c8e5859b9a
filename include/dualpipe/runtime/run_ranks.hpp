// dualpipe/runtime/run_ranks.hpp: run one function per rank on its own thread (the in-process world's
// ranks), and report failures only once every thread has finished.
#pragma once

#include <exception>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/core/error.hpp"

namespace dualpipe {

/// Runs fn(rank) for rank 0..ranks-1, each on its own thread, joins them all, then rethrows the first
/// exception (lowest rank). Throws ConfigError for ranks < 1 before starting any thread.
template <class F>
void run_ranks(int ranks, F&& fn) {
  if (ranks < 1) throw ConfigError("run_ranks: ranks must be at least 1 (got ranks=" + std::to_string(ranks) + ")");
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(ranks));
  std::exception_ptr start_error;
  try {
    for (int r = 0; r < ranks; ++r)
      threads.emplace_back([&fn, &errors, r] {
        try {
          fn(r);
        } catch (...) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
        }
      });
  } catch (...) {
    // A thread could not be started: the ones that did still run to their end (their peers' waits time
    // out), and the start failure is what the caller sees.
    start_error = std::current_exception();
  }
  for (std::thread& t : threads) t.join();
  if (start_error) std::rethrow_exception(start_error);
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace dualpipe
