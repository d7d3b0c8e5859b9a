// dualpipe/runtime/device.hpp: the Device policy, the executor's third policy next to the Communicator and
// the Stage: where the chunk buffers live, which stream a stage computes on, and how compute and
// communication are ordered. HostDevice (here, the default) is the plain host: every hook does nothing, so
// the executor runs exactly as it would without one. CudaDevice (dualpipe/cuda/device.hpp) is the GPU.
//
// The executor calls, in this order within a step:
//   begin_step(plan, step) -> bool       start of a step; true when the device ran the whole step itself
//                                        (a replayed CUDA graph): the executor then skips the op list.
//   stream(lane) -> void*                put in StageContext::stream (lane main, or second for the backward
//                                        half of an FB).
//   op_begin(op, index) / op_end(...)    around every compute op and commit (profiler ranges, timing).
//   use(lane, bytes) / used(lane, bytes) before / after a compute op on `lane` touches a chunk buffer.
//   fork() / join()                      around an FB: the second lane starts after, and the main lane
//                                        continues after, everything issued so far.
//   post(bytes)                          a chunk buffer goes into the group of the next commit.
//   before_commit() / after_commit()     around comm.commit() and the group's wait.
//   loss_slot(result, batch_chunk)       where an asynchronous loss (StageWithAsyncLoss) is written.
//   copy_output(result, offset, bytes)   a last-stage output the step returns.
//   end_step(result, timeout)            end of a step: the device's work is done when it returns.
//   abandon_step()                       after a failure: leave the device quiet (noexcept).
// slot_memory() -> SlotMemory*           where the chunk buffers live (null: host memory); asked when a
//                                        step's buffers are built.
// tracks_buffers                         static constexpr bool: whether use/used/post want every buffer
//                                        (HostDevice: false, so the executor does not even look them up).
// Optional, detected at compile time:
//   attach(comm)                         DeviceWithAttach: called once when the Executor is built, with
//                                        the pipeline's communicator (CudaDevice takes its stream).
// Each requirement is written once, as a detail:: concept that both DevicePolicy and check_device_policy()
// use.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <type_traits>

#include "dualpipe/core/bytes.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/runtime/chunk_queue.hpp"
#include "dualpipe/runtime/executor_step.hpp"
#include "dualpipe/runtime/plan.hpp"
#include "dualpipe/runtime/step_result.hpp"

namespace dualpipe {

/// Which compute stream of a rank an op (or half of an FB) runs on.
enum class ComputeLane : unsigned char {
  main,    ///< Every op, and the forward half of an FB.
  second,  ///< The backward half of an FB (so that both halves can run at once).
};

namespace detail {
template <class D>
concept device_has_tracks_buffers = requires {
  { D::tracks_buffers } -> std::convertible_to<bool>;
  typename std::bool_constant<static_cast<bool>(D::tracks_buffers)>;  // static and constant: `if constexpr`
};
template <class D>
concept device_has_slot_memory = requires(D& d) {
  { d.slot_memory() } -> std::convertible_to<SlotMemory*>;
};
template <class D>
concept device_has_begin_step = requires(D& d, const RankPlan& plan, const ExecutorStep& step) {
  { d.begin_step(plan, step) } -> std::convertible_to<bool>;
};
template <class D>
concept device_has_stream = requires(const D& d, ComputeLane lane) {
  { d.stream(lane) } -> std::convertible_to<void*>;
};
template <class D>
concept device_has_op_hooks = requires(D& d, const Op& op, int index) {
  d.op_begin(op, index);
  d.op_end(op, index);
};
template <class D>
concept device_has_buffer_hooks = requires(D& d, ComputeLane lane, ConstBytes bytes) {
  d.use(lane, bytes);
  d.used(lane, bytes);
  d.post(bytes);
};
template <class D>
concept device_has_order_hooks = requires(D& d) {
  d.fork();
  d.join();
  d.before_commit();
  d.after_commit();
  d.abandon_step();
};
template <class D>
concept device_has_result_hooks = requires(D& d, StepResult& result, std::size_t n, ConstBytes bytes) {
  { d.loss_slot(result, n) } -> std::same_as<double*>;
  d.copy_output(result, n, bytes);
};
template <class D>
concept device_has_end_step = requires(D& d, StepResult& result, std::chrono::milliseconds timeout) {
  d.end_step(result, timeout);
};
template <class D, class Comm>
concept device_has_attach = requires(D& d, Comm& comm) {
  d.attach(comm);
};
}  // namespace detail

/// A device policy: see the file comment for what each expression means.
template <class D>
concept DevicePolicy =
    detail::device_has_tracks_buffers<D> && detail::device_has_slot_memory<D> && detail::device_has_begin_step<D> &&
    detail::device_has_stream<D> && detail::device_has_op_hooks<D> && detail::device_has_buffer_hooks<D> &&
    detail::device_has_order_hooks<D> && detail::device_has_result_hooks<D> && detail::device_has_end_step<D>;

/// A device policy that attaches to the pipeline's communicator (`attach(comm)`, called once when the
/// Executor is built; a CUDA device takes the communicator's stream there).
template <class D, class Comm>
concept DeviceWithAttach = DevicePolicy<D> && detail::device_has_attach<D, Comm>;

/// Compile-time check with messages in plain words: `static_assert(check_device_policy<MyDevice>())`.
template <class D>
consteval bool check_device_policy() {
  static_assert(detail::device_has_tracks_buffers<D>, "Device policy needs: static constexpr bool tracks_buffers");
  static_assert(detail::device_has_slot_memory<D>,
                "Device policy needs: dualpipe::SlotMemory* slot_memory() (null: host memory)");
  static_assert(detail::device_has_begin_step<D>,
                "Device policy needs: bool begin_step(const dualpipe::RankPlan&, const dualpipe::ExecutorStep&)");
  static_assert(detail::device_has_stream<D>, "Device policy needs: void* stream(dualpipe::ComputeLane) const");
  static_assert(detail::device_has_op_hooks<D>,
                "Device policy needs: op_begin(const dualpipe::Op&, int) and op_end(const dualpipe::Op&, int)");
  static_assert(detail::device_has_buffer_hooks<D>,
                "Device policy needs: use(ComputeLane, ConstBytes), used(ComputeLane, ConstBytes), post(ConstBytes)");
  static_assert(detail::device_has_order_hooks<D>,
                "Device policy needs: fork(), join(), before_commit(), after_commit(), abandon_step()");
  static_assert(detail::device_has_result_hooks<D>,
                "Device policy needs: double* loss_slot(StepResult&, std::size_t batch_chunk) and "
                "copy_output(StepResult&, std::size_t offset, ConstBytes)");
  static_assert(detail::device_has_end_step<D>,
                "Device policy needs: end_step(StepResult&, std::chrono::milliseconds timeout)");
  return DevicePolicy<D>;
}

/// The host: buffers in host memory, stages compute on the calling thread, nothing to order.
struct HostDevice {
  /// The executor need not look up buffers for use/used/post.
  static constexpr bool tracks_buffers = false;
  /// Host memory: the pools allocate their own.
  [[nodiscard]] SlotMemory* slot_memory() noexcept { return nullptr; }
  /// Nothing to prepare; never replays.
  [[nodiscard]] bool begin_step(const RankPlan&, const ExecutorStep&) noexcept { return false; }
  /// No stream: StageContext::stream stays null.
  [[nodiscard]] void* stream(ComputeLane) const noexcept { return nullptr; }
  void op_begin(const Op&, int) noexcept {}
  void op_end(const Op&, int) noexcept {}
  void use(ComputeLane, ConstBytes) noexcept {}
  void used(ComputeLane, ConstBytes) noexcept {}
  void fork() noexcept {}
  void join() noexcept {}
  void post(ConstBytes) noexcept {}
  void before_commit() noexcept {}
  void after_commit() noexcept {}
  /// The result's own entry: a host stage writes its loss there at once.
  [[nodiscard]] double* loss_slot(StepResult& r, std::size_t batch_chunk) noexcept { return &r.losses[batch_chunk]; }
  /// A host copy into the result's outputs.
  void copy_output(StepResult& r, std::size_t offset, ConstBytes src) noexcept {
    std::memcpy(r.outputs.data() + offset, src.data(), src.size());
  }
  void end_step(StepResult&, std::chrono::milliseconds) noexcept {}
  void abandon_step() noexcept {}
};

static_assert(check_device_policy<HostDevice>());

}  // namespace dualpipe
