// dualpipe/comm/detail/meeting.hpp: a reusable meeting of a world's ranks (the end-of-step barrier, the
// collective reset), shared by the in-process and CUDA-local worlds.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <vector>

#include "dualpipe/core/bytes.hpp"

namespace dualpipe::detail {

/// Where `parties` threads meet, again and again: one generation per meeting. The caller guards it with
/// its own mutex (held in `lk` for every call) and wakes its waiters through `cv`.
class Meeting {
public:
  enum class Result { met, stopped, timed_out };

  /// Arrives, and waits until every party arrived, `stop()` is true (checked under the lock), or
  /// `deadline`. The last to arrive runs `last()` under the lock, before anyone is woken. A party that
  /// leaves without meeting takes its arrival back (see waiting()).
  template <class Stop, class Last>
  Result arrive(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, int parties,
                std::chrono::steady_clock::time_point deadline, Stop stop, Last last) {
    const std::size_t generation = _generation;
    if (++_arrived == parties) {
      last();
      _arrived = 0;
      ++_generation;
      lk.unlock();
      cv.notify_all();
      return Result::met;
    }
    cv.wait_until(lk, deadline, [&] { return _generation != generation || stop(); });
    if (_generation != generation) return Result::met;
    --_arrived;
    return stop() ? Result::stopped : Result::timed_out;
  }

  /// Parties waiting now (after a timeout: the others, for the message).
  [[nodiscard]] int waiting() const noexcept { return _arrived; }
  /// Forgets the parties waiting (the collective reset of a world, when every rank is elsewhere).
  void clear() noexcept { _arrived = 0; }

private:
  int _arrived = 0;
  std::size_t _generation = 0;
};

/// An all-gather of a world's ranks over host memory: each rank writes its part, they meet, the last one
/// snapshots the whole, and each copies the snapshot out. The snapshot is only rewritten by the next
/// gather's last arrival, which comes after every rank has read this one.
class HostGather {
public:
  /// Rank `rank`'s `mine` into everyone's `all` (parties x mine.size()). The caller holds `lk` (its world's
  /// mutex) and checks the sizes. Returns as Meeting::arrive does; on `met`, `all` is filled.
  template <class Stop>
  Meeting::Result run(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, int parties, int rank,
                      std::chrono::steady_clock::time_point deadline, Stop stop, ConstBytes mine, MutableBytes all) {
    if (_in.size() < all.size()) {  // the first gather of this size (a pipeline's first step)
      _in.resize(all.size());
      _out.resize(all.size());
    }
    std::memcpy(_in.data() + static_cast<std::size_t>(rank) * mine.size(), mine.data(), mine.size());
    const Meeting::Result r =
        _meeting.arrive(lk, cv, parties, deadline, stop, [&] { std::memcpy(_out.data(), _in.data(), all.size()); });
    if (r == Meeting::Result::met) {
      if (!lk.owns_lock()) lk.lock();
      std::memcpy(all.data(), _out.data(), all.size());
    }
    return r;
  }
  /// Parties waiting now.
  [[nodiscard]] int waiting() const noexcept { return _meeting.waiting(); }
  /// Forgets the parties waiting (a collective reset).
  void clear() noexcept { _meeting.clear(); }

private:
  Meeting _meeting;
  std::vector<std::byte> _in, _out;
};

}  // namespace dualpipe::detail
