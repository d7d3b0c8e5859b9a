// NcclExpertComm (nccl/expert_comm.hpp): the expert group's all-to-all over NCCL. Per-peer counts (zeros
// among them) and data for EP=2 and EP=4 on the grid's ep communicator, ordered after the stream that wrote
// the send buffer and waited for on the host or by another stream (on the emulator, a missing order is a
// reported race); a timeout and the watchdog naming rank, chunk and phase; abort; and the ordering rule
// against the pipeline's NCCL work: on the emulator with one NCCL kernel per device, the rule's order
// completes where the same calls without it deadlock.
#include <doctest/doctest.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/nccl.hpp"
#include "dualpipe/nccl/expert_comm.hpp"
#include "gpu_test_kernels.hpp"
#ifdef DUALPIPE_TEST_EMULATED
#include "cuda_emulator.hpp"
#endif

using namespace dualpipe;
using namespace std::chrono_literals;

namespace {

// Doubles that rank `s` sends to rank `d` (zero for some pairs).
std::size_t count(int s, int d) { return static_cast<std::size_t>((s + 2 * d + 1) % 4) * 3; }
double value(int s, int d, std::size_t i, int round) {
  return 1000.0 * s + 100.0 * d + static_cast<double>(i) + 0.5 * round;
}

// One rank's device buffers for an exchange: the send segments, in peer order, and room for the receives.
struct Buffers {
  Buffers(int rank, int size, int round) {
    for (int p = 0; p < size; ++p) {
      send_counts.push_back(count(rank, p) * sizeof(double));
      recv_counts.push_back(count(p, rank) * sizeof(double));
      for (std::size_t i = 0; i < count(rank, p); ++i) host_send.push_back(value(rank, p, i, round));
      for (std::size_t i = 0; i < count(p, rank); ++i) want.push_back(value(p, rank, i, round));
    }
    DUALPIPE_CUDA_CHECK(cudaMalloc(&send, std::max<std::size_t>(host_send.size(), 1) * sizeof(double)));
    DUALPIPE_CUDA_CHECK(cudaMalloc(&recv, std::max<std::size_t>(want.size(), 1) * sizeof(double)));
    DUALPIPE_CUDA_CHECK(cudaMalloc(&out, std::max<std::size_t>(want.size(), 1) * sizeof(double)));
  }
  ~Buffers() {
    ignore_cuda_error(cudaFree(send));
    ignore_cuda_error(cudaFree(recv));
    ignore_cuda_error(cudaFree(out));
  }
  Buffers(const Buffers&) = delete;
  Buffers& operator=(const Buffers&) = delete;

  // Writes the send segments on `s` after a while (so that an exchange not ordered after `s` reads stale data).
  void fill(cudaStream_t s) {
    gputest::spin(2'000'000, s);
    DUALPIPE_CUDA_CHECK(
        cudaMemcpyAsync(send, host_send.data(), host_send.size() * sizeof(double), cudaMemcpyHostToDevice, s));
  }
  [[nodiscard]] AllToAllBuffers view(cudaStream_t after) const {
    return AllToAllBuffers{ConstBytes(reinterpret_cast<const std::byte*>(send), host_send.size() * sizeof(double)),
                           send_counts, MutableBytes(reinterpret_cast<std::byte*>(recv), want.size() * sizeof(double)),
                           recv_counts, after};
  }
  // `from` (recv or out) on the host, after `s`'s work.
  [[nodiscard]] std::vector<double> read(const double* from, cudaStream_t s) const {
    std::vector<double> h(want.size());
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(h.data(), from, h.size() * sizeof(double), cudaMemcpyDeviceToHost, s));
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(s));
    return h;
  }

  std::vector<std::size_t> send_counts, recv_counts;
  std::vector<double> host_send, want;
  double* send = nullptr;
  double* recv = nullptr;
  double* out = nullptr;
};

ExpertTag tag_of(int chunk, int phase, bool backward = false) {
  ExpertTag t;
  t.module = 1;
  t.chunk = chunk;
  t.layer = 2;
  t.phase = phase;
  t.backward = backward;
  return t;
}

// Every rank's communicator of one unique id, blocking (as a framework would hand it over).
ncclComm_t join(int rank, int size, const ncclUniqueId& id) {
  ncclComm_t c = nullptr;
  DUALPIPE_NCCL_CHECK(ncclCommInitRank(&c, size, id, rank));
  return c;
}

}  // namespace

TEST_CASE("Gpu.NcclExpert.AllToAllMovesEveryPeersSegmentOnTheGridsEpCommunicator" * doctest::timeout(300)) {
  for (const int E : {2, 4}) {
    const int P = 2, W = P * E;
    if (cuda_device_count() < W) {
      MESSAGE("needs " << W << " CUDA devices");
      return;
    }
    CAPTURE(E);
    const ProcessGrid pgrid(W, {.pp = P, .ep = E}, "pp,ep");
    const ncclUniqueId world_id = make_unique_id();
    struct Seen {
      std::vector<std::vector<double>> after_stream_waited, host_waited, stream_waited, want;
      int rank = -1, size = 0;
      long exchanges = 0;
      bool tags_kept = true;
      std::string error;
    };
    std::vector<Seen> seen(static_cast<std::size_t>(W));
    run_ranks(W, [&](int r) {
      Seen& me = seen[static_cast<std::size_t>(r)];
      try {
        DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
        NcclComm world(join(r, W, world_id));
        NcclGrid grid(pgrid, world.get());
        NcclExpertComm ep(NcclBorrow{grid.communicator(GridDim::ep)});
        me.rank = ep.rank();
        me.size = ep.size();
        Stream compute, other;
        // Three rounds, two exchanges in flight in each (two chunks of an FB): the completion events are reused.
        for (int round = 0; round < 3; ++round) {
          Buffers a(ep.rank(), ep.size(), round), b(ep.rank(), ep.size(), round + 10);
          a.fill(compute.get());
          b.fill(compute.get());
          auto xa = ep.start_all_to_all(tag_of(2 * round, 1), a.view(compute.get()));
          auto xb = ep.start_all_to_all(tag_of(2 * round + 1, 1, true), b.view(compute.get()));
          me.tags_kept = me.tags_kept && xb.tag() == tag_of(2 * round + 1, 1, true);
          // b: another stream waits on the device and copies the receives; the host waits for that stream only.
          xb.enqueue_wait(other.get());
          gputest::scale(b.recv, b.out, 1.0, b.want.size(), 0, other.get());
          me.stream_waited.push_back(b.read(b.out, other.get()));
          // a: the executor's wait orders `compute` (its after_stream) after the exchange, without a host wait.
          xa.wait(30s);
          xa.wait(30s);  // a second wait returns at once
          me.after_stream_waited.push_back(a.read(a.recv, compute.get()));
          me.want.push_back(a.want);
          me.want.push_back(b.want);
          xb.synchronize(30s);  // the host waits
          me.host_waited.push_back(b.read(b.recv, other.get()));
        }
        me.exchanges = ep.aborted() ? -1 : ep.exchanges();
      } catch (const std::exception& e) {
        me.error = e.what();
      }
    });
    for (int r = 0; r < W; ++r) {
      const Seen& me = seen[static_cast<std::size_t>(r)];
      INFO("rank " << r << ": " << me.error);
      REQUIRE(me.error.empty());
      CHECK(me.rank == pgrid.coord(r, GridDim::ep));
      CHECK(me.size == E);
      CHECK(me.exchanges == 6);
      CHECK(me.tags_kept);
      for (int round = 0; round < 3; ++round) {
        const auto k = static_cast<std::size_t>(round);
        CHECK(me.after_stream_waited[k] == me.want[2 * k]);
        CHECK(me.stream_waited[k] == me.want[2 * k + 1]);
        CHECK(me.host_waited[k] == me.want[2 * k + 1]);
      }
    }
  }
}

TEST_CASE("Gpu.NcclExpert.BadCountsAreConfigErrors") {
  if (cuda_device_count() < 2) return;
  const ncclUniqueId id = make_unique_id();
  std::vector<std::string> errors(2);
  std::vector<long> started(2, -1);
  run_ranks(2, [&](int r) {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
    NcclComm c(join(r, 2, id));
    NcclExpertComm ep(NcclBorrow{c.get()});
    Buffers b(r, 2, 0);
    AllToAllBuffers v = b.view(nullptr);
    const std::vector<std::size_t> one{8};
    v.send_counts = one;
    try {
      (void)ep.start_all_to_all(tag_of(0, 0), v);
    } catch (const ConfigError& e) {
      errors[static_cast<std::size_t>(r)] = e.what();
    }
    started[static_cast<std::size_t>(r)] = ep.aborted() ? -1 : ep.exchanges();
  });
  CHECK(started == std::vector<long>{0, 0});
  for (const std::string& e : errors) {
    CHECK(e.find("count spans have 1 and 2 entries") != std::string::npos);
    CHECK(e.find("chunk 0") != std::string::npos);
  }
}

TEST_CASE("Gpu.NcclExpert.TimeoutAndWatchdogNameRankChunkAndPhase" * doctest::timeout(300)) {
  constexpr int E = 4;
  if (cuda_device_count() < E) return;
  const ncclUniqueId id = make_unique_id();
  struct Seen {
    std::string timeout, later, watchdog;
    std::optional<FailureOrigin> origin;
    std::string error;
  };
  std::vector<Seen> seen(E);
  run_ranks(E, [&](int r) {
    Seen& me = seen[static_cast<std::size_t>(r)];
    try {
      DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
      NcclComm c(join(r, E, id));
      if (r == E - 1) return;  // never starts the exchange: the others' kernels wait for it
      NcclExpertOptions o;
      o.borrowed_on_failure = NcclFailurePolicy::report_only;  // the owner (this test) aborts it below
      o.report_rank = 10 + r;
      o.timeout = r == 0 ? 400ms : 60s;  // the watchdog's bound (rank 0's only fires)
      NcclExpertComm ep(NcclBorrow{c.get()}, o);
      Buffers b(r, E, 0);
      Stream s;
      auto x = ep.start_all_to_all(tag_of(5, 3, true), b.view(nullptr));
      if (r == 0) {  // only a stream waits: the watchdog ends it
        x.enqueue_wait(s.get());
        const auto deadline = deadline_after(30s);
        while (!ep.aborted() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
        if (auto f = ep.failure()) me.watchdog = f->describe();
      } else {
        try {
          x.wait(200ms);
        } catch (const TimeoutError& e) {
          me.timeout = e.what();
        }
      }
      me.origin = ep.failure();
      try {
        x.wait(1s);
      } catch (const CommAborted& e) {
        me.later = e.what();
      }
      c.abort();  // report_only: the owner ends the kernels still waiting for rank E-1
    } catch (const std::exception& e) {
      me.error = e.what();
    }
  });
  for (int r = 0; r < E - 1; ++r) {
    const Seen& me = seen[static_cast<std::size_t>(r)];
    INFO("rank " << r << ": " << me.error);
    REQUIRE(me.error.empty());
    REQUIRE(me.origin.has_value());
    CHECK(me.origin->rank == 10 + r);
    CHECK(me.later.find("rank " + std::to_string(10 + r)) != std::string::npos);
    const std::string& named = r == 0 ? me.watchdog : me.timeout;
    INFO(named);
    CHECK(named.find("rank " + std::to_string(10 + r)) != std::string::npos);
    CHECK(named.find("the all-to-all (module 1, chunk 5, layer 2, backward phase 3)") != std::string::npos);
    if (r > 0) {
      CHECK(me.origin->chunk == 5);
      CHECK(me.origin->module == 1);
    } else {
      CHECK(named.find("watchdog") != std::string::npos);
    }
  }
}

TEST_CASE("Gpu.NcclExpert.AbortWakesTheWaitAndLaterStartsFail" * doctest::timeout(300)) {
  if (cuda_device_count() < 2) return;
  const ncclUniqueId id = make_unique_id();
  std::string woken, after_start, enqueue;
  bool aborted_flag = false;
  run_ranks(2, [&](int r) {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
    NcclComm c(join(r, 2, id));
    if (r == 1) return;                      // never starts
    NcclExpertComm ep(NcclBorrow{c.get()});  // NcclFailurePolicy::abort: ends the waiting kernel
    Buffers b(r, 2, 0);
    auto x = ep.start_all_to_all(tag_of(1, 0), b.view(nullptr));
    std::thread other([&] {
      std::this_thread::sleep_for(100ms);
      FailureOrigin o;
      o.rank = 7;
      o.chunk = 2;
      o.op = "FB2.1/3.0";
      o.what = "a stage threw";
      ep.abort(o);
    });
    try {
      x.wait(60s);
    } catch (const CommAborted& e) {
      woken = e.what();
    }
    other.join();
    aborted_flag = ep.aborted();
    auto y = ep.start_all_to_all(tag_of(2, 0), b.view(nullptr));  // nothing is issued
    try {
      y.wait(1s);
    } catch (const CommAborted& e) {
      after_start = e.what();
    }
    Stream s;
    try {
      y.enqueue_wait(s.get());
    } catch (const CommAborted& e) {
      enqueue = e.what();
    }
    (void)c.release();  // aborted (and freed by NCCL): the owner must not finalise it
  });
  CHECK(aborted_flag);
  for (const std::string* m : {&woken, &after_start, &enqueue}) {
    INFO(*m);
    CHECK(m->find("rank 7, module -1, chunk 2, op FB2.1/3.0: a stage threw") != std::string::npos);
  }
}

// Two ranks, a pipeline communicator (NcclCommunicator) and an expert one over the same two GPUs. Rank 0's
// pipeline group waits for slow compute, rank 1's exchange too; both ranks issue the pipeline group first.
// With the rule (pipeline_stream), or with the exchanges on the pipeline's own stream, each GPU runs its NCCL
// kernels one at a time in that order and all ends.
// Without it, on a GPU that holds one NCCL kernel (the emulator's NcclKernelLimit), rank 0 runs its exchange
// while rank 1 runs its pipeline group: each waits for the other's GPU, until the expert waits time out.
namespace {
struct OrderingRun {
  std::vector<std::string> expert_error = std::vector<std::string>(2);
  std::vector<std::vector<double>> got = std::vector<std::vector<double>>(2), want = got;
  std::vector<std::string> error = std::vector<std::string>(2);
};

// How the exchanges are ordered against the pipeline's transfers.
enum class Order { rule, same_stream, none };

OrderingRun run_pipeline_and_expert(Order order, std::chrono::milliseconds expert_timeout) {
  OrderingRun out;
  const ncclUniqueId pp_id = make_unique_id(), ep_id = make_unique_id();
  run_ranks(2, [&](int r) {
    const auto k = static_cast<std::size_t>(r);
    try {
      DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
      NcclComm pp_c(join(r, 2, pp_id)), ep_c(join(r, 2, ep_id));
      NcclCommunicator pipe(NcclBorrow{pp_c.get(), nullptr});
      NcclExpertOptions o;
      if (order == Order::rule) o.pipeline_stream = pipe.stream();
      if (order == Order::same_stream) o.stream = pipe.stream();  // one stream: issue order, as the rule
      NcclExpertComm ep(NcclBorrow{ep_c.get()}, o);
      Stream compute, quick;
      Event slow_done;
      gputest::spin(300'000'000, compute.get());  // 0.3 s of "compute"
      Buffers b(r, 2, 0);
      b.fill(r == 1 ? compute.get() : quick.get());
      double* act = nullptr;
      DUALPIPE_CUDA_CHECK(cudaMalloc(&act, 64 * sizeof(double)));
      // The pipeline's group: rank 0 sends an activation after the slow compute (as CudaDevice orders a send).
      if (r == 0) {
        gputest::iota(act, 64, 3.0, compute.get());
        slow_done.record(compute);
        DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(pipe.stream(), slow_done.get(), 0));
        pipe.post_send(1, MessageTag{0, 4, Payload::activation}, ConstBytes(reinterpret_cast<std::byte*>(act), 512));
      } else {
        pipe.post_recv(0, MessageTag{0, 4, Payload::activation}, MutableBytes(reinterpret_cast<std::byte*>(act), 512));
      }
      pipe.commit().wait(30s);
      // The exchange: rank 1's waits for the slow compute (after_stream); rank 0's is ready at once.
      auto x = ep.start_all_to_all(tag_of(4, 1), b.view(r == 1 ? compute.get() : quick.get()));
      try {
        x.synchronize(expert_timeout);
        out.got[k] = b.read(b.recv, compute.get());
      } catch (const Error& e) {
        out.expert_error[k] = e.what();
      }
      out.want[k] = b.want;
      pipe.synchronize(30s);
      if (r == 1) {
        std::vector<double> h(64);
        DUALPIPE_CUDA_CHECK(cudaMemcpy(h.data(), act, 512, cudaMemcpyDeviceToHost));
        if (h[63] != 66.0) out.error[k] = "the pipeline's activation arrived wrong";
      }
      ignore_cuda_error(cudaFree(act));
      if (ep.aborted()) (void)ep_c.release();  // aborted (and freed by NCCL)
    } catch (const std::exception& e) {
      out.error[k] = e.what();
    }
  });
  return out;
}
}  // namespace

TEST_CASE("Gpu.NcclExpert.OrderingRuleKeepsPipelineAndExpertNcclFromDeadlocking" * doctest::timeout(300)) {
  if (cuda_device_count() < 2) return;
  {
#ifdef DUALPIPE_TEST_EMULATED
    const cuda_emulator::NcclKernelLimit one(1);  // the worst GPU: one NCCL kernel at a time
#endif
    for (const Order order : {Order::rule, Order::same_stream}) {
      const OrderingRun ok = run_pipeline_and_expert(order, 60s);
      for (std::size_t r = 0; r < 2; ++r) {
        INFO("order " << static_cast<int>(order) << ", rank " << r << ": " << ok.error[r] << ok.expert_error[r]);
        CHECK(ok.error[r].empty());
        CHECK(ok.expert_error[r].empty());
        CHECK(ok.got[r] == ok.want[r]);
      }
    }
  }
#ifdef DUALPIPE_TEST_EMULATED
  // The same calls without the rule deadlock on such a GPU: the test above can fail.
  const cuda_emulator::NcclKernelLimit one(1);
  const OrderingRun bad = run_pipeline_and_expert(Order::none, 1500ms);
  int timed_out = 0;
  for (std::size_t r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << bad.error[r]);
    CHECK(bad.error[r].empty());  // the pipeline's transfer still completes once an exchange is aborted
    if (bad.expert_error[r].find("the all-to-all (module 1, chunk 4, layer 2, forward phase 1) was not done") !=
        std::string::npos)
      ++timed_out;
  }
  CHECK(timed_out >= 1);
#endif
}

TEST_CASE("Gpu.NcclExpert.AFailedExchangeAbortsThePipelineCommunicatorToo" * doctest::timeout(300)) {
  if (cuda_device_count() < 2) return;
  const ncclUniqueId pp_id = make_unique_id(), ep_id = make_unique_id();
  std::string barrier_error;
  bool pipeline_aborted = false;
  run_ranks(2, [&](int r) {
    DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
    NcclComm pp_c(join(r, 2, pp_id)), ep_c(join(r, 2, ep_id));
    if (r == 1) return;  // never starts the exchange
    {
      NcclCommunicator pipe(NcclBorrow{pp_c.get(), nullptr});  // NcclFailurePolicy::abort, as the expert one
      NcclExpertOptions o;
      o.pipeline = &pipe;
      o.timeout = 300ms;  // the watchdog's bound
      NcclExpertComm ep(NcclBorrow{ep_c.get()}, o);
      Buffers b(r, 2, 0);
      Stream compute;
      auto x = ep.start_all_to_all(tag_of(3, 1), b.view(compute.get()));
      x.wait(30s);  // on the device: the host learns nothing here
      try {
        pipe.barrier(30s);  // what the executor does at the end of a step
      } catch (const CommAborted& e) {
        barrier_error = e.what();
      }
      pipeline_aborted = pipe.aborted();
    }
    // Both were aborted (and freed by NCCL): the owner must not finalise them.
    (void)pp_c.release();
    (void)ep_c.release();
  });
  CHECK(pipeline_aborted);
  INFO(barrier_error);
  CHECK(barrier_error.find("the all-to-all (module 1, chunk 3, layer 2, forward phase 1) was not done") !=
        std::string::npos);
}
