// dualpipe/torch/deferred_weight_grads.hpp: the weight-gradient work that layers put aside during an input
// pass, for the weight pass to run later (the zero-bubble split without walking the graph twice).
//
// A layer that can defer (DeferredLinear, or a user's own autograd function) asks, inside its backward,
// deferred_weight_grads_sink(): when a store is active on this thread, it computes only its input's gradient
// and hands the store a job that computes and accumulates its weights' gradients (keeping the tensors that
// job needs); otherwise it computes everything at once, as any layer does. TorchStage activates a chunk's
// store (DeferWeightGradsInto) around the input pass and runs it as that chunk's weight pass.
//
// The store is found through a thread-local pointer, not through the graph: whether a backward is split or
// fused is decided when it runs, not when the forward is recorded. libtorch runs a CPU graph's backward on
// the thread that asked for it; were it ever to run a node elsewhere, that layer would find no store and
// compute its weight gradients at once, which is slower but not wrong.
#pragma once

#include <cstddef>
#include <functional>
#include <utility>
#include <vector>

namespace dualpipe {

/// Marks a torch::nn module whose backward can defer its weight-gradient work (TorchStage looks for it among
/// its module's submodules to choose the deferring split).
class DefersWeightGrads {
public:
  virtual ~DefersWeightGrads() = default;

protected:
  DefersWeightGrads() = default;
  DefersWeightGrads(const DefersWeightGrads&) = default;
  DefersWeightGrads& operator=(const DefersWeightGrads&) = default;
};

/// The weight-gradient jobs deferred by one backward (one chunk's input pass), in the order they were put aside.
class DeferredWeightGrads {
public:
  using Job = std::function<void()>;

  /// Puts a job aside; it computes some weights' gradients and adds them into their .grad.
  void defer(Job job) { _jobs.push_back(std::move(job)); }
  /// Runs every job once, in order, and forgets them (with the tensors they kept) as each finishes.
  void run() {
    std::vector<Job> jobs = std::exchange(_jobs, {});
    for (Job& job : jobs) {
      job();
      job = nullptr;
    }
  }
  /// Jobs waiting.
  [[nodiscard]] std::size_t size() const noexcept { return _jobs.size(); }
  [[nodiscard]] bool empty() const noexcept { return _jobs.empty(); }
  /// Forgets the jobs without running them (a failed step).
  void clear() noexcept { _jobs.clear(); }

private:
  std::vector<Job> _jobs;
};

namespace detail {
inline DeferredWeightGrads*& weight_grad_sink_slot() noexcept {
  thread_local DeferredWeightGrads* sink = nullptr;
  return sink;
}
}  // namespace detail

/// The store that layers' backward should defer weight work into on this thread; null: compute it at once.
[[nodiscard]] inline DeferredWeightGrads* deferred_weight_grads_sink() noexcept {
  return detail::weight_grad_sink_slot();
}

/// While alive, layers' backward on this thread defer their weight-gradient work into `store`.
class DeferWeightGradsInto {
public:
  explicit DeferWeightGradsInto(DeferredWeightGrads& store) noexcept
      : _previous(std::exchange(detail::weight_grad_sink_slot(), &store)) {}
  ~DeferWeightGradsInto() { detail::weight_grad_sink_slot() = _previous; }
  DeferWeightGradsInto(const DeferWeightGradsInto&) = delete;
  DeferWeightGradsInto& operator=(const DeferWeightGradsInto&) = delete;

private:
  DeferredWeightGrads* _previous;
};

}  // namespace dualpipe
