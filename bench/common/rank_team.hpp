// bench/common/rank_team.hpp: the rank threads of an in-process benchmark, alive across its iterations, so
// that an iteration times one step of every rank and not the starting of threads.
//
//   RankTeam team(P, [&](int r) -> RankTeam::StepFn {
//     auto pipe = std::make_shared<Pipeline<...>>(world.communicator(r), ...);   // built on rank r's thread
//     return [pipe] { pipe->step(...); };
//   });
//   team.step();                              // every rank runs one step; returns when all are done
//   for (auto _ : state) team.step();
//   if (team.failures() > 0) state.SkipWithError("a step failed");
#pragma once

#include <atomic>
#include <barrier>
#include <functional>
#include <thread>
#include <vector>

namespace benchutil {

class RankTeam {
public:
  /// One step of one rank.
  using StepFn = std::function<void()>;

  /// Starts `ranks` threads; thread r calls `make(r)` once and then runs what it returns at every step().
  RankTeam(int ranks, std::function<StepFn(int)> make) : _go(ranks + 1), _done(ranks + 1) {
    for (int r = 0; r < ranks; ++r)
      _threads.emplace_back([this, r, make] {
        StepFn step;
        try {
          step = make(r);
        } catch (...) {
          _failures.fetch_add(1);
        }
        for (;;) {
          _go.arrive_and_wait();
          if (_stop.load()) return;
          try {
            if (step) step();
          } catch (...) {
            _failures.fetch_add(1);
          }
          _done.arrive_and_wait();
        }
      });
  }
  RankTeam(const RankTeam&) = delete;
  RankTeam& operator=(const RankTeam&) = delete;
  ~RankTeam() {
    _stop = true;
    _go.arrive_and_wait();
    for (std::thread& t : _threads) t.join();
  }

  /// Every rank runs one step; returns when all have finished it.
  void step() {
    _go.arrive_and_wait();
    _done.arrive_and_wait();
  }
  /// Ranks whose set-up or a step threw so far (a benchmark should then report an error, not a time).
  [[nodiscard]] int failures() const noexcept { return _failures.load(); }

private:
  std::barrier<> _go, _done;
  std::atomic<bool> _stop{false};
  std::atomic<int> _failures{0};
  std::vector<std::thread> _threads;  // last: they use the members above
};

}  // namespace benchutil
