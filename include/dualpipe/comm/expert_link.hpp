// dualpipe/comm/expert_link.hpp: an ExpertComm on a modelled link, so that an all-to-all costs on a CPU what
// it would on a network, and its overlap with compute can be seen and measured.
//
//   InProcessExpertComm& raw = groups.comm(r);
//   LinkedExpertComm<InProcessExpertComm> ec(raw, ExpertLink{std::chrono::microseconds(500), 10.0});
//
// An exchange started at t on this rank is done no earlier than
//   t + latency + (bytes this rank sends to other ranks) / bandwidth
// wait() first waits on the inner exchange (so every error, abort and timeout is the inner one's), then
// waits until that deadline (a sleep, then polls that yield the core): the time is a wait, not compute, so the other chunk's compute fills it (on
// a loaded machine, a sleeping rank gives its core to the others).
#pragma once

#include <chrono>
#include <cstddef>
#include <thread>
#include <type_traits>
#include <utility>

#include "dualpipe/comm/expert_comm.hpp"
#include "dualpipe/core/error.hpp"

namespace dualpipe {

/// A link: a latency per exchange and a bandwidth (gigabits per second; 0 = unlimited).
struct ExpertLink {
  std::chrono::nanoseconds latency{0};
  double gbps = 0;

  /// Time an exchange that sends `bytes` takes on this link.
  [[nodiscard]] std::chrono::nanoseconds cost(std::size_t bytes) const noexcept {
    if (gbps <= 0) return latency;
    return latency + std::chrono::nanoseconds(static_cast<long long>(static_cast<double>(bytes) * 8.0 / gbps));
  }
};

/// `E` on a modelled link (see the file comment); models ExpertComm. Holds `inner` by reference.
template <class E>
  requires ExpertComm<E>
class LinkedExpertComm {
public:
  using InnerHandle = decltype(std::declval<E&>().start_all_to_all(ExpertTag{}, AllToAllBuffers{}));

  /// Waits on the inner exchange, then until the link's deadline.
  class Handle {
  public:
    Handle(InnerHandle inner, std::chrono::steady_clock::time_point deadline)
        : _inner(std::move(inner)), _deadline(deadline) {}
    void wait(std::chrono::milliseconds timeout) {
      _inner.wait(timeout);
      // Sleep most of the way (the core goes to other ranks), then poll: a sleep wakes up late.
      std::this_thread::sleep_until(_deadline - std::chrono::microseconds(100));
      while (std::chrono::steady_clock::now() < _deadline) std::this_thread::yield();
    }

  private:
    InnerHandle _inner;
    std::chrono::steady_clock::time_point _deadline;
  };

  /// Throws ConfigError for a negative latency or bandwidth.
  LinkedExpertComm(E& inner, ExpertLink link) : _inner(inner), _link(link) {
    if (link.latency.count() < 0 || link.gbps < 0)
      throw ConfigError("ExpertLink: latency and bandwidth must not be negative (got latency=" +
                        std::to_string(link.latency.count()) + " ns, gbps=" + std::to_string(link.gbps) + ")");
  }

  [[nodiscard]] int rank() const { return _inner.rank(); }
  [[nodiscard]] int size() const { return _inner.size(); }
  [[nodiscard]] const ExpertLink& link() const noexcept { return _link; }
  /// Changes the link for the exchanges started from now on (a benchmark calibrates it).
  void set_link(ExpertLink link) { _link = LinkedExpertComm(_inner, link)._link; }

  [[nodiscard]] Handle start_all_to_all(const ExpertTag& tag, const AllToAllBuffers& buffers) {
    std::size_t bytes = 0;
    for (std::size_t p = 0; p < buffers.send_counts.size(); ++p)
      if (static_cast<int>(p) != _inner.rank()) bytes += buffers.send_counts[p];
    const auto deadline = std::chrono::steady_clock::now() + _link.cost(bytes);
    return Handle(_inner.start_all_to_all(tag, buffers), deadline);
  }

  void abort(const FailureOrigin& origin) { _inner.abort(origin); }

private:
  E& _inner;
  ExpertLink _link;
};

}  // namespace dualpipe
