// Device policy and communicator concepts, compile-time instantiation of the CUDA pipeline (so that every
// CUDA template is compiled here, where there is no GPU), NVTX names, and the message order NCCL needs.
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "dualpipe/dualpipe.hpp"
#ifdef DUALPIPE_TEST_NCCL
#include "dualpipe/nccl.hpp"
#endif

using namespace dualpipe;

int dualpipe_umbrella_is_clean();  // test_umbrella_clean.cpp

namespace {

// A stage with every hook a GPU stage may have (loss_to, forward_backward); bodies do nothing.
struct GpuLikeStage {
  void forward(const StageContext&, ConstBytes, MutableBytes) {}
  double loss(const StageContext&, ConstBytes, ConstBytes) { return 0; }
  void loss_to(const StageContext&, ConstBytes, ConstBytes, double* l) { *l = 0; }
  void backward_input(const StageContext&, ConstBytes, MutableBytes) {}
  void backward_weight(const StageContext&) {}
  [[nodiscard]] std::size_t input_bytes() const { return 64; }
  [[nodiscard]] std::size_t output_bytes() const { return 64; }
  static void forward_backward(GpuLikeStage&, const StageContext&, ConstBytes, MutableBytes, GpuLikeStage&,
                               const StageContext&, ConstBytes, MutableBytes) {}
};
struct PlainStage {
  void forward(const StageContext&, ConstBytes, MutableBytes) {}
  double loss(const StageContext&, ConstBytes, ConstBytes) { return 0; }
  void backward_input(const StageContext&, ConstBytes, MutableBytes) {}
  void backward_weight(const StageContext&) {}
  [[nodiscard]] std::size_t input_bytes() const { return 64; }
  [[nodiscard]] std::size_t output_bytes() const { return 64; }
};

struct NotADevice {
  static constexpr bool tracks_buffers = false;
  SlotMemory* slot_memory() { return nullptr; }
};
struct NotAnAllocator {
  void* allocate(std::size_t) { return nullptr; }
};

}  // namespace

// Never called: makes the compiler instantiate the CUDA pipelines (with and without hooks), so that a
// template error shows up here rather than on the first machine with a GPU.
[[maybe_unused]] void instantiate_cuda_pipelines(CudaLocalWorld& world, ConstBytes in, ConstBytes labels) {
  GpuLikeStage a, b;
  Pipeline<DualPipe, CudaLocalCommunicator, GpuLikeStage, CudaDevice> p1(world.communicator(0), {&a, &b});
  (void)p1.step(4, in, labels, {true});
  (void)p1.eval(4, in);
  p1.reset();
  PlainStage c;
  Pipeline<OneFOneB, CudaLocalCommunicator, PlainStage, BasicCudaDevice<SyncAllocator>> p2(
      world.communicator(0), {&c}, {}, BasicCudaDevice<SyncAllocator>(CudaDeviceOptions{}));
  (void)p2.step(4, in, labels);
#ifdef DUALPIPE_TEST_NCCL
  NcclCommunicator comm(0, 1, ncclUniqueId{});
  Pipeline<DualPipeV, NcclCommunicator, GpuLikeStage, CudaDevice> p3(comm, {&a, &b});
  (void)p3.step(4, in, labels);
#endif
}

TEST_CASE("Cuda.Policy.Concepts") {
  CHECK(dualpipe_umbrella_is_clean() == 1);
  static_assert(DevicePolicy<HostDevice>);
  static_assert(check_device_policy<CudaDevice>());
  static_assert(DevicePolicy<BasicCudaDevice<SyncAllocator>>);
  static_assert(!DevicePolicy<NotADevice>);
  static_assert(DeviceAllocator<AsyncAllocator> && DeviceAllocator<SyncAllocator>);
  static_assert(!DeviceAllocator<NotAnAllocator>);
  static_assert(check_communicator<CudaLocalCommunicator>());
  static_assert(!CommunicatorWithPolling<CudaLocalCommunicator>);      // its waits are stream waits: no weight fill
  static_assert(!CommunicatorWithEagerLaunch<CudaLocalCommunicator>);  // nor eager transfers
  static_assert(CommunicatorWithBarrier<CudaLocalCommunicator>);
  static_assert(CommunicatorWithCollectiveReset<CudaLocalCommunicator>);
  static_assert(DeviceWithAttach<CudaDevice, CudaLocalCommunicator> &&
                !DeviceWithAttach<HostDevice, CudaLocalCommunicator>);
  static_assert(StageWithAsyncLoss<GpuLikeStage> && !StageWithAsyncLoss<PlainStage>);
  static_assert(StageWithOverlap<GpuLikeStage>);
#ifdef DUALPIPE_TEST_NCCL
  static_assert(check_communicator<NcclCommunicator>());
  static_assert(CommunicatorWithBarrier<NcclCommunicator>);
  // No reset: after an abort an NCCL communicator is dead (build a new one).
  static_assert(!CommunicatorWithReset<NcclCommunicator> && !CommunicatorWithCollectiveReset<NcclCommunicator>);
  static_assert(DeviceWithAttach<CudaDevice, NcclCommunicator>);
  static_assert(NcclCommunicator::graph_capturable());
#endif
  CHECK(HostDevice{}.stream(ComputeLane::second) == nullptr);
}

TEST_CASE("Cuda.Nvtx.NamesAreOpTokens") {
  CHECK(nvtx_name(Op::FB(1, 2, 0, 0)) == "FB1.2/0.0");
  CHECK(nvtx_name(Op::F(0, 3)) == "F0.3");
  CHECK(nvtx_name(Op::commit_op()) == "|");
  const std::vector<Op> ops{Op::F(0, 0), Op::sF(0, 0), Op::commit_op(), Op::W()};
  const NvtxNames names(ops);
  CHECK(names.size() == (nvtx_enabled ? ops.size() : 0u));
  { NvtxRange r(names, 0); }   // no profiler attached: a no-op, but must not crash or leak a range
  { NvtxRange r(names, 99); }  // outside the list: nothing opened, nothing closed
  { NvtxRange r("dualpipe test"); }
}

// NCCL matches the point-to-point messages of a pair of ranks in the order they are posted (it sends no
// tags). So for every ordered pair (a, b), the tags a posts sends to b with must come in the same order as
// the tags b posts receives from a with. Checked for every schedule on a grid of (P, C), peers taken from
// the placements exactly as the executor takes them.
TEST_CASE("Nccl.PairOrder.EverySchedule") {
  for (ScheduleKind kind : all_schedule_kinds) {
    visit_schedule(kind, [&](auto sched) {
      using S = decltype(sched);
      for (int P : {1, 2, 3, 4, 6, 8})
        for (int C : {P, 2 * P, 2 * P + 1, 3 * P, 20}) {
          try {
            S::check(P, C);
          } catch (const ConfigError&) {
            continue;
          }
          for (Mode mode : {Mode::train, Mode::forward}) {
            CAPTURE(std::string(S::name));
            CAPTURE(P);
            CAPTURE(C);
            CAPTURE(std::string(to_string(mode)));
            using Seq = std::vector<std::tuple<int, int, int>>;  // (module, chunk, payload)
            std::map<std::pair<int, int>, Seq> sent, received;   // (src, dst) -> tags in post order
            for (int r = 0; r < P; ++r) {
              const RankPlan plan = make_rank_plan<S>(P, C, r, mode);
              for (const Op& op : plan.ops) {
                if (!is_post(op.kind)) continue;
                const ModulePlacement& pl = plan.placements[static_cast<std::size_t>(op.module)];
                const int payload = carries_activation(op.kind) ? 0 : 1;
                const auto tag = std::make_tuple(int(op.module), int(op.chunk), payload);
                switch (op.kind) {
                  case OpKind::send_activation: sent[{r, pl.next_rank}].push_back(tag); break;
                  case OpKind::send_gradient: sent[{r, pl.prev_rank}].push_back(tag); break;
                  case OpKind::recv_activation: received[{pl.prev_rank, r}].push_back(tag); break;
                  case OpKind::recv_gradient: received[{pl.next_rank, r}].push_back(tag); break;
                  default: break;
                }
              }
            }
            CHECK(sent.size() == received.size());
            for (const auto& [pair, tags] : sent) {
              CAPTURE(pair.first);
              CAPTURE(pair.second);
              CHECK(received[pair] == tags);
            }
          }
        }
    });
  }
}
