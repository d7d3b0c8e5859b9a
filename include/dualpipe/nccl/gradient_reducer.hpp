// dualpipe/nccl/gradient_reducer.hpp: NcclGradientReducer, the device twin of HostGradientReduction
// (runtime/gradient_reduction.hpp): sums each stage's gradients (device buffers) over its copies (DualPipe
// holds every stage on two ranks) and over the data-parallel replicas, with NCCL, on a communicator and
// stream of its own, so that it never collides with the pipeline's transfers.
//
//   const StageCopies copies = stage_copies<DualPipe>(P, C);
//   const GradientGroup g = gradient_group(pgrid, copies, rank);     // who sums with whom
//   NcclComm grads = grid.split(g.colour, g.key);                     // the user makes its communicator
//   NcclGradientReducer<float> reduce(copies, pgrid, rank, grads.get(), {grad0, grad1});
//   ... pipeline.step(...)   // MyStage::on_grads_ready(ctx): reduce.post(ctx.module, cuda_stream(ctx))
//   reduce.finish();          // every module's gradient is the sum over copies and replicas, on every copy
//
// The group: the ranks that hold a copy of any of this rank's stages (DualPipe: pipeline ranks r and P-1-r,
// which hold the same two stages), in every dp replica, with the same ep and tp coordinates
// (gradient_group: colour and key for ncclCommSplit). Every member holds the same stages, so the reduction
// is one in-place ncclAllReduce (sum) per module, issued in stage order on every member: NCCL reduces each
// element once and hands every rank the same result, so every copy of a stage in every replica ends with
// the same bits (the emulator adds in rank order; a GPU in NCCL's order, the same for every receiver).
//
// post(module, producer) waits (on the reduction's stream, through an event) for the work issued to
// `producer` so far: call it from Stage::on_grads_ready with the context's stream to start the reduction
// during the pipeline's cool-down. A module's all-reduce is issued once it and every module of a lower
// stage were posted (all members issue them in the same order). post(module) without a producer: the
// gradient is already complete (e.g. after Pipeline::step returned, which waits for the step's GPU work).
// finish() posts the rest and waits on the host (bounded by the timeout). Overlapping with the pipeline
// means two NCCL communicators' kernels at once on one GPU; NCCL documents that this needs them to run
// concurrently (true on current GPUs with free SMs); reduce after the step (post from finish()) to avoid it.
//
// A failure (an NCCL error, a timeout) aborts the borrowed communicator under NcclFailurePolicy::abort (the
// default) or leaves it to its owner under report_only; every later call throws CommAborted.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#if __has_include(<cuda_bf16.h>)
#include <cuda_bf16.h>
#define DUALPIPE_NCCL_HAS_BF16 1
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/comm/process_grid.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/nccl/communicator.hpp"
#include "dualpipe/nccl/error.hpp"
#include "dualpipe/runtime/gradient_reduction.hpp"
#include "dualpipe/schedule/stage_copies.hpp"

namespace dualpipe {

/// The NCCL type of a gradient element: float, double (and __nv_bfloat16 where cuda_bf16.h is).
template <class T>
struct nccl_type_of;
template <>
struct nccl_type_of<float> {
  static constexpr ncclDataType_t value = ncclFloat32;
};
template <>
struct nccl_type_of<double> {
  static constexpr ncclDataType_t value = ncclFloat64;
};
#ifdef DUALPIPE_NCCL_HAS_BF16
template <>
struct nccl_type_of<__nv_bfloat16> {
  static constexpr ncclDataType_t value = ncclBfloat16;
};
#endif

/// Rank `rank`'s gradient-reduction group (see the file comment): split the parent with `colour` and `key`.
struct GradientGroup {
  int colour = 0;            ///< ncclCommSplit's colour (the same for every member).
  int key = 0;               ///< ncclCommSplit's key (orders the members: replica, then pipeline rank).
  int size = 1;              ///< Members.
  int rank = 0;              ///< This rank's rank in the split communicator.
  std::vector<int> members;  ///< Grid ranks of the members, by their rank in the group.
};

/// The group of grid rank `rank` for `copies` (the schedule's, on the grid's pp dimension). Throws
/// ConfigError when the copies' ranks are not the grid's pp size, or the ranks that share stages do not all
/// hold the same stages.
[[nodiscard]] inline GradientGroup gradient_group(const ProcessGrid& grid, const StageCopies& copies, int rank) {
  const int P = grid.size(GridDim::pp);
  if (copies.ranks != P)
    throw ConfigError("gradient_group: the schedule's copies are over " + std::to_string(copies.ranks) +
                      " pipeline ranks, the grid has pp=" + std::to_string(P));
  auto stages_of = [&](int p) {
    std::set<int> s;
    for (int m = 0; m < copies.modules_per_rank; ++m) s.insert(copies.stage(p, m));
    return s;
  };
  const int me = grid.coord(rank, GridDim::pp);
  const std::set<int> mine = stages_of(me);
  std::set<int> component;  // pipeline ranks holding a copy of one of my stages
  for (int s : mine)
    for (const StageCopy& c : copies.copies(s)) component.insert(c.rank);
  for (int p : component)
    if (stages_of(p) != mine)
      throw ConfigError("gradient_group: pipeline ranks " + std::to_string(me) + " and " + std::to_string(p) +
                        " share a stage but not all their stages; the NCCL reduction needs every rank of a group "
                        "to hold the same stages");
  GradientGroup g;
  std::array<int, 4> c = grid.coords(rank);
  c[static_cast<std::size_t>(GridDim::pp)] = *component.begin();
  g.colour = grid.group_index(GridDim::dp, grid.rank_of(c));  // unique per (first pipeline rank, ep, tp)
  const int dp = grid.size(GridDim::dp);
  g.size = static_cast<int>(component.size()) * dp;
  g.key = grid.coord(rank, GridDim::dp) * P + me;
  for (int d = 0; d < dp; ++d)
    for (int p : component) {
      std::array<int, 4> m = grid.coords(rank);
      m[static_cast<std::size_t>(GridDim::pp)] = p;
      m[static_cast<std::size_t>(GridDim::dp)] = d;
      if (d == grid.coord(rank, GridDim::dp) && p == me) g.rank = static_cast<int>(g.members.size());
      g.members.push_back(grid.rank_of(m));
    }
  return g;
}

/// Knobs of an NcclGradientReducer.
struct NcclReductionOptions {
  std::chrono::milliseconds timeout{60'000};  ///< Bound on finish()'s wait (and on each call's launch).
  cudaStream_t stream = nullptr;  ///< The reduction's stream (lent, on the communicator's device); null: its own.
  NcclFailurePolicy on_failure = NcclFailurePolicy::abort;  ///< What a failure does to the (borrowed) communicator.
};

/// The device reduction of one rank's module gradients over their stage's copies and the dp replicas (see
/// the file comment). Borrows the communicator (never creates, finalises or destroys one). Used by one
/// thread (the rank's). Models GradientReducer.
template <class T>
class NcclGradientReducer {
public:
  /// `grads[m]`: module m's gradient, device memory on the communicator's device, reduced in place (not
  /// owned; each stage's buffers have the same size on every member). `comm`: split with gradient_group's
  /// colour and key. Throws ConfigError (module count, a communicator that is not this rank's group, two
  /// copies of one stage on this rank), NcclError, CudaError.
  NcclGradientReducer(const StageCopies& copies, const ProcessGrid& grid, int rank, ncclComm_t comm,
                      std::vector<std::span<T>> grads, NcclReductionOptions options = {})
      : _comm(comm), _grads(std::move(grads)), _options(options), _rank(rank) {
    if (!comm) throw ConfigError("NcclGradientReducer: the communicator is null");
    if (static_cast<int>(_grads.size()) != copies.modules_per_rank)
      throw ConfigError("NcclGradientReducer: " + std::to_string(_grads.size()) + " gradient buffers given, rank " +
                        std::to_string(rank) + " has " + std::to_string(copies.modules_per_rank) + " modules");
    if (_options.timeout.count() <= 0)
      throw ConfigError("NcclGradientReducer: timeout must be positive (got " +
                        std::to_string(_options.timeout.count()) + " ms)");
    const GradientGroup g = gradient_group(grid, copies, rank);
    int size = 0, crank = 0;
    DUALPIPE_NCCL_CHECK(ncclCommCount(comm, &size));
    DUALPIPE_NCCL_CHECK(ncclCommUserRank(comm, &crank));
    DUALPIPE_NCCL_CHECK(ncclCommCuDevice(comm, &_device));
    if (size != g.size || crank != g.rank)
      throw ConfigError("NcclGradientReducer: grid rank " + std::to_string(rank) + "'s communicator is rank " +
                        std::to_string(crank) + " of " + std::to_string(size) + ", its gradient group wants rank " +
                        std::to_string(g.rank) + " of " + std::to_string(g.size) +
                        " (split the parent with gradient_group()'s colour and key)");
    const int p = grid.coord(rank, GridDim::pp);
    for (int m = 0; m < copies.modules_per_rank; ++m) _order.push_back(m);
    std::sort(_order.begin(), _order.end(), [&](int a, int b) { return copies.stage(p, a) < copies.stage(p, b); });
    for (std::size_t i = 1; i < _order.size(); ++i)
      if (copies.stage(p, _order[i]) == copies.stage(p, _order[i - 1]))
        throw ConfigError("NcclGradientReducer: rank " + std::to_string(rank) + " holds two copies of stage " +
                          std::to_string(copies.stage(p, _order[i])) + " (the reduction handles one per rank)");
    DeviceGuard on(_device);
    if (_options.stream) {
      _stream_used = _options.stream;
    } else {
      _stream = std::make_unique<Stream>(cudaStreamNonBlocking);
      _stream_used = _stream->get();
    }
    for (std::size_t m = 0; m < _grads.size(); ++m) _ready.emplace_back(Event::ordering);
    _done.emplace(Event::ordering);
    _posted.assign(_grads.size(), false);
    _waits.assign(_grads.size(), false);
  }

  NcclGradientReducer(const NcclGradientReducer&) = delete;
  NcclGradientReducer& operator=(const NcclGradientReducer&) = delete;
  /// Waits (bounded) for what it issued; never touches the communicator.
  ~NcclGradientReducer() {
    try {
      DeviceGuard on(_device);
      _done->record(_stream_used);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!_done->ready() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    } catch (...) {}
  }

  /// Module `module`'s gradient is complete (nothing still writing it); issues the all-reduces now due.
  void post(int module) { post_impl(module, nullptr); }
  /// Module `module`'s gradient is complete once the work issued to `producer` so far is done (call it from
  /// on_grads_ready with cuda_stream(ctx)); issues the all-reduces now due.
  void post(int module, cudaStream_t producer) { post_impl(module, producer); }

  /// Posts what was not posted, issues the rest, and waits (up to the timeout) until every module's
  /// gradient holds its stage's sum over copies and replicas. Collective over the group. Throws
  /// CommAborted (an earlier failure), TimeoutError, NcclError, CudaError.
  void finish() {
    for (std::size_t m = 0; m < _grads.size(); ++m)
      if (!_posted[m]) post_impl(static_cast<int>(m), nullptr);
    DeviceGuard on(_device);
    _done->record(_stream_used);
    const auto deadline = deadline_after(_options.timeout);
    while (!_done->ready()) {
      check_async("the gradient all-reduces");
      if (std::chrono::steady_clock::now() >= deadline)
        fail_timeout("the gradient all-reduces did not finish within " + std::to_string(_options.timeout.count()) +
                     " ms");
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    std::fill(_posted.begin(), _posted.end(), false);
    _next = 0;
  }

  /// The reduction's stream (lent or its own).
  [[nodiscard]] cudaStream_t stream() const noexcept { return _stream_used; }
  /// Whether a failure stopped it.
  [[nodiscard]] bool failed() const noexcept { return _failed; }

private:
  void post_impl(int module, cudaStream_t producer) {
    if (_failed) throw CommAborted(_origin);
    if (module < 0 || module >= static_cast<int>(_grads.size()))
      throw ConfigError("NcclGradientReducer: module must be in [0, " + std::to_string(_grads.size()) + ") (got " +
                        std::to_string(module) + ")");
    const auto m = static_cast<std::size_t>(module);
    if (_posted[m]) return;
    DeviceGuard on(_device);
    _waits[m] = producer != nullptr;
    if (producer) _ready[m].record(producer);
    _posted[m] = true;
    while (_next < _order.size() && _posted[static_cast<std::size_t>(_order[_next])]) issue(_order[_next++]);
  }

  void issue(int module) {
    const auto m = static_cast<std::size_t>(module);
    if (_waits[m]) StreamRef(_stream_used).wait(_ready[m]);
    std::span<T> g = _grads[m];
    const ncclResult_t r =
        ncclAllReduce(g.data(), g.data(), g.size(), nccl_type_of<T>::value, ncclSum, _comm, _stream_used);
    if (r != ncclSuccess && r != ncclInProgress)
      fail(NcclError(format_nccl_error(r, "ncclAllReduce (gradient reduction)", __FILE__, __LINE__, _comm),
                     static_cast<int>(r)));
    // A non-blocking communicator takes the call in the background: wait until it is enqueued.
    const auto deadline = deadline_after(_options.timeout);
    for (;;) {
      if (!check_async("launching a gradient all-reduce")) return;
      if (std::chrono::steady_clock::now() >= deadline)
        fail_timeout("launching module " + std::to_string(module) + "'s all-reduce took over " +
                     std::to_string(_options.timeout.count()) + " ms");
      std::this_thread::yield();
    }
  }

  // True while the communicator's last call is still in progress; throws on an error.
  bool check_async(const char* what) {
    ncclResult_t st = ncclSuccess;
    const ncclResult_t q = ncclCommGetAsyncError(_comm, &st);
    if (q != ncclSuccess) st = q;
    if (st == ncclSuccess) return false;
    if (st == ncclInProgress) return true;
    fail(NcclError(format_nccl_error(st, what, __FILE__, __LINE__, _comm), static_cast<int>(st)));
  }

  [[noreturn]] void fail_timeout(const std::string& what) {
    fail(TimeoutError("NcclGradientReducer: grid rank " + std::to_string(_rank) + ": " + what));
  }

  template <class E>
  [[noreturn]] void fail(const E& error) {
    _failed = true;
    _origin.rank = _rank;
    _origin.op = "gradient reduction";
    _origin.what = error.what();
    if (_options.on_failure == NcclFailurePolicy::abort) (void)ncclCommAbort(_comm);
    throw error;
  }

  ncclComm_t _comm;
  std::vector<std::span<T>> _grads;
  NcclReductionOptions _options;
  int _rank;
  int _device = 0;
  std::unique_ptr<Stream> _stream;  // its own, when none was lent
  cudaStream_t _stream_used = nullptr;
  std::vector<Event> _ready;   // [module]: recorded on its producer
  std::optional<Event> _done;  // made on the communicator's device
  std::vector<int> _order;     // modules by stage: the all-reduces' order on every member
  std::vector<bool> _posted;   // [module]
  std::vector<bool> _waits;    // [module]: the all-reduce waits for _ready
  std::size_t _next = 0;       // _order[_next] is the next all-reduce to issue
  bool _failed = false;
  FailureOrigin _origin;
};

static_assert(GradientReducer<NcclGradientReducer<float>>);

}  // namespace dualpipe
