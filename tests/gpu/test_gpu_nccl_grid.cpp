// The framework's own NCCL handles: a borrowed ncclComm_t and streams (NcclBorrow, CudaDeviceOptions'
// lent streams), the NCCL grid (ncclCommSplit, or one id per group), and the device gradient reduction, in
// a PP=4 x DP=2 world of 8 devices running DualPipe. On the emulator, the count of communicators created
// shows that the library made none behind the user's back.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "dualpipe/nccl.hpp"
#include "gpu_affine_stage.hpp"
#ifdef DUALPIPE_TEST_EMULATED
#include "cuda_emulator.hpp"
#endif

using namespace dualpipe;
using namespace gputest;
using namespace std::chrono_literals;

namespace {

// GpuAffineStage that hands each module's finished gradient to the device reduction (when one is set).
class ReducingStage : public GpuAffineStage<false> {
public:
  using GpuAffineStage<false>::GpuAffineStage;
  void on_grads_ready(const StageContext& ctx) {
    ++ready_calls;
    if (reducer) reducer->post(ctx.module, cuda_stream(ctx));
  }
  NcclGradientReducer<double>* reducer = nullptr;
  int ready_calls = 0;
};
static_assert(StageWithGradsReady<ReducingStage>);

// Polls a non-blocking communicator until its last call is enqueued.
void wait_launched(ncclComm_t c) {
  const auto deadline = deadline_after(30s);
  for (;;) {
    ncclResult_t st = ncclSuccess;
    DUALPIPE_NCCL_CHECK(ncclCommGetAsyncError(c, &st));
    if (st == ncclSuccess) return;
    REQUIRE(st == ncclInProgress);
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::yield();
  }
}

// A one-integer sum over `c` on `s`: whether the communicator still works.
int sum_of_ones(ncclComm_t c, cudaStream_t s) {
  int* d = nullptr;
  DUALPIPE_CUDA_CHECK(cudaMalloc(&d, sizeof(int)));
  const int one = 1;
  DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(d, &one, sizeof(int), cudaMemcpyHostToDevice, s));  // ordered before the sum
  DUALPIPE_NCCL_CHECK(ncclAllReduce(d, d, 1, ncclInt32, ncclSum, c, s));
  wait_launched(c);
  DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(s));
  int h = 0;
  DUALPIPE_CUDA_CHECK(cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost));
  DUALPIPE_CUDA_CHECK(cudaFree(d));
  return h;
}

FailureOrigin origin() {
  FailureOrigin o;
  o.rank = 0;
  o.op = "test";
  o.what = "a failure elsewhere";
  return o;
}

long communicators_created() {
#ifdef DUALPIPE_TEST_EMULATED
  return cuda_emulator::nccl_communicators_created();
#else
  return 0;
#endif
}

}  // namespace

TEST_CASE("Gpu.NcclGrid.BorrowedHandlesAndTheDeviceReductionInAPp4Dp2World" * doctest::timeout(600)) {
  constexpr int P = 4, D = 2, W = P * D, C = 8;
  constexpr std::size_t n = 256;
  if (cuda_device_count() < W) {
    MESSAGE("needs " << W << " CUDA devices");
    return;
  }
  const ProcessGrid pgrid(W, {.pp = P, .dp = D}, "pp,dp");
  const StageCopies copies = stage_copies<DualPipe>(P, C);
  const ncclUniqueId world_id = make_unique_id();
  const long created_before = communicators_created();

  struct Seen {
    std::array<int, 2> stage{};
    std::array<std::vector<double>, 2> own, reduced;  // per module: the copy's gradient, then the reduced one
    std::array<int, 2> ready_calls{};
    bool streams_lent = true;  // every stage call ran on the lent main or second stream
    bool borrowed = false;     // NcclCommunicator::owns_communicator() was false, rank and size the grid's
    int sum_after = 0;         // the pipeline communicator's all-reduce after the pipeline was gone
    std::string error;
  };
  std::vector<Seen> seen(W);
  run_ranks(W, [&](int r) {
    Seen& me = seen[static_cast<std::size_t>(r)];
    try {
      DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
      // The user's: the world communicator, the grid's split ones, the reduction's, and every stream.
      ncclComm_t raw = nullptr;
      DUALPIPE_NCCL_CHECK(ncclCommInitRank(&raw, W, world_id, r));
      NcclComm world(raw);
      NcclGrid grid(pgrid, world.get());
      const GradientGroup group = gradient_group(pgrid, copies, r);
      NcclComm grads = grid.split(group.colour, group.key);
      Stream comm_stream, main_stream, second_stream, reduce_stream;
      const int p = pgrid.coord(r, GridDim::pp), d = pgrid.coord(r, GridDim::dp);

      // Replica d trains on its own chunks of the batch, so the replicas' gradients differ.
      std::vector<double> in(C * n), lab(C * n);
      for (std::size_t i = 0; i < in.size(); ++i) {
        in[i] = std::sin(0.001 * static_cast<double>(i) + 0.5 * d) * 0.5;
        lab[i] = std::cos(0.0007 * static_cast<double>(i) - 0.25 * d) * 0.25;
      }
      DeviceBuffer<SyncAllocator> d_in(in.size() * sizeof(double), StreamRef()),
          d_lab(lab.size() * sizeof(double), StreamRef());
      DUALPIPE_CUDA_CHECK(cudaMemcpy(d_in.data(), in.data(), d_in.size(), cudaMemcpyHostToDevice));
      DUALPIPE_CUDA_CHECK(cudaMemcpy(d_lab.data(), lab.data(), d_lab.size(), cudaMemcpyHostToDevice));
      const ConstBytes in_b(static_cast<const std::byte*>(d_in.data()), d_in.size());
      const ConstBytes lab_b(static_cast<const std::byte*>(d_lab.data()), d_lab.size());

      std::vector<std::unique_ptr<ReducingStage>> stages;
      for (int m = 0; m < 2; ++m) {
        const ModulePlacement pl = DualPipe::placement(P, C, p, m);
        stages.push_back(std::make_unique<ReducingStage>(pl.stage, pl.num_chunks, n, 2'000));
        me.stage[static_cast<std::size_t>(m)] = pl.stage;
      }
      NcclReductionOptions ro;
      ro.stream = reduce_stream.get();
      NcclGradientReducer<double> reducer(
          copies, pgrid, r, grads.get(),
          {std::span<double>(stages[0]->grad_data(), 2), std::span<double>(stages[1]->grad_data(), 2)}, ro);
      CHECK(reducer.stream() == reduce_stream.get());
      {
        NcclOptions no;
        no.borrowed_on_failure = NcclFailurePolicy::report_only;
        NcclCommunicator comm(NcclBorrow{grid.communicator(GridDim::pp), comm_stream.get()}, no);
        me.borrowed = !comm.owns_communicator() && comm.rank() == p && comm.size() == P && comm.device() == r &&
                      comm.stream() == comm_stream.get();
        CudaDeviceOptions dopt;
        dopt.device = r;
        dopt.main_stream = main_stream.get();
        dopt.second_stream = second_stream.get();
        PipelineOptions po;
        po.timeout = 60s;
        Pipeline<DualPipe, NcclCommunicator, ReducingStage, CudaDevice> pipe(comm, {stages[0].get(), stages[1].get()},
                                                                             po, CudaDevice(dopt));
        // Step 1: each copy's own gradient. Step 2: the same batch, reduced from on_grads_ready.
        for (auto& s : stages) s->zero_grad();
        (void)pipe.step(C, in_b, lab_b);
        for (int m = 0; m < 2; ++m) me.own[static_cast<std::size_t>(m)] = stages[static_cast<std::size_t>(m)]->grads();
        for (auto& s : stages) {
          s->zero_grad();
          s->reducer = &reducer;
        }
        (void)pipe.step(C, in_b, lab_b);
        reducer.finish();
        for (int m = 0; m < 2; ++m) {
          auto& s = *stages[static_cast<std::size_t>(m)];
          me.reduced[static_cast<std::size_t>(m)] = s.grads();
          me.ready_calls[static_cast<std::size_t>(m)] = s.ready_calls;
          for (const Call& c : s.calls)
            me.streams_lent = me.streams_lent && (c.stream == main_stream.get() || c.stream == second_stream.get());
        }
      }
      // The pipeline and its NcclCommunicator are gone; the borrowed communicator still works.
      me.sum_after = sum_of_ones(grid.communicator(GridDim::pp), comm_stream.get());
    } catch (const std::exception& e) {
      me.error = e.what();
    }
  });

  for (int r = 0; r < W; ++r) {
    const Seen& me = seen[static_cast<std::size_t>(r)];
    INFO("rank " << r << ": " << me.error);
    REQUIRE(me.error.empty());
    CHECK(me.borrowed);
    CHECK(me.streams_lent);
    CHECK(me.sum_after == P);
    CHECK(me.ready_calls == std::array<int, 2>{2, 2});  // once per module per step
  }
  // Every copy of every stage, in both replicas, holds the same bits: the sum of every copy's own gradient.
  for (int s = 0; s < copies.stages; ++s) {
    std::vector<std::vector<double>> holders;
    std::vector<double> want(2, 0.0);
    bool first = true;
    for (int d = 0; d < D; ++d)
      for (int r = 0; r < W; ++r) {
        if (pgrid.coord(r, GridDim::dp) != d) continue;
        for (std::size_t m = 0; m < 2; ++m) {
          const Seen& me = seen[static_cast<std::size_t>(r)];
          if (me.stage[m] != s) continue;
          holders.push_back(me.reduced[m]);
          for (std::size_t i = 0; i < 2; ++i) want[i] = first ? me.own[m][i] : want[i] + me.own[m][i];
          first = false;
          CHECK(me.own[m] != me.reduced[m]);  // the reduction changed it
        }
      }
    INFO("stage " << s);
    REQUIRE(holders.size() == static_cast<std::size_t>(2 * D));
    for (const auto& h : holders) CHECK(std::memcmp(h.data(), holders[0].data(), 2 * sizeof(double)) == 0);
    for (std::size_t i = 0; i < 2; ++i)
      CHECK(std::abs(holders[0][i] - want[i]) <= 1e-12 * std::max(1.0, std::abs(want[i])));
  }
#ifdef DUALPIPE_TEST_EMULATED
  // The user's own: one world communicator, two grid splits (pp, dp) and the reduction's split per rank.
  CHECK(communicators_created() - created_before == W * (1 + 2 + 1));
#else
  (void)created_before;
#endif
}

TEST_CASE("Gpu.NcclGrid.FromOneIdPerGroup" * doctest::timeout(300)) {
  constexpr int P = 4, D = 2, W = P * D;
  if (cuda_device_count() < W) {
    MESSAGE("needs " << W << " CUDA devices");
    return;
  }
  const ProcessGrid pgrid(W, {.pp = P, .dp = D}, "pp,dp");
  const NcclGridIds ids = NcclGridIds::make(pgrid);
  const long created_before = communicators_created();
  std::vector<std::array<int, 4>> got(W);  // pp rank, pp size, dp rank, dp size
  std::vector<std::string> errors(W);
  run_ranks(W, [&](int r) {
    try {
      NcclGrid grid(pgrid, r, ids, r);
      for (GridDim dim : {GridDim::pp, GridDim::dp}) {
        const auto k = dim == GridDim::pp ? 0u : 2u;
        DUALPIPE_NCCL_CHECK(ncclCommUserRank(grid.communicator(dim), &got[static_cast<std::size_t>(r)][k]));
        DUALPIPE_NCCL_CHECK(ncclCommCount(grid.communicator(dim), &got[static_cast<std::size_t>(r)][k + 1]));
      }
      CHECK_FALSE(grid.has(GridDim::ep));
      CHECK_THROWS_AS((void)grid.communicator(GridDim::ep), ConfigError);
      CHECK_THROWS_AS((void)grid.split(GridDim::pp), ConfigError);  // no parent to split
    } catch (const std::exception& e) {
      errors[static_cast<std::size_t>(r)] = e.what();
    }
  });
  for (int r = 0; r < W; ++r) {
    INFO("rank " << r << ": " << errors[static_cast<std::size_t>(r)]);
    REQUIRE(errors[static_cast<std::size_t>(r)].empty());
    CHECK(got[static_cast<std::size_t>(r)] ==
          std::array<int, 4>{pgrid.coord(r, GridDim::pp), P, pgrid.coord(r, GridDim::dp), D});
  }
#ifdef DUALPIPE_TEST_EMULATED
  CHECK(communicators_created() - created_before == W * 2);
#else
  (void)created_before;
#endif
  // A table made for another grid is refused before any communicator is made.
  const NcclGridIds other = NcclGridIds::make(ProcessGrid(W, {.pp = 2, .dp = 4}, "pp,dp"));
  CHECK_THROWS_AS((void)NcclGrid(pgrid, 0, other, 0), ConfigError);
}

TEST_CASE("Gpu.NcclGrid.ABorrowedCommunicatorsFailurePolicy" * doctest::timeout(120)) {
  // report_only: the borrower stops and reports; the communicator is the owner's and still works.
  ncclComm_t raw = nullptr;
  DUALPIPE_CUDA_CHECK(cudaSetDevice(0));
  DUALPIPE_NCCL_CHECK(ncclCommInitRank(&raw, 1, make_unique_id(), 0));
  NcclComm owned(raw);
  Stream s;
  {
    NcclOptions o;
    o.borrowed_on_failure = NcclFailurePolicy::report_only;
    NcclCommunicator comm(NcclBorrow{owned.get(), s.get()}, o);
    comm.abort(origin());
    CHECK(comm.aborted());
    CHECK_THROWS_AS(comm.barrier(5s), CommAborted);
  }
  CHECK(sum_of_ones(owned.get(), s.get()) == 1);
  // abort (the default): the borrower aborts it, as it would its own; the owner must not use it again.
  {
    NcclCommunicator comm(NcclBorrow{owned.get()});  // no stream lent: its own
    CHECK(comm.stream() != nullptr);
    CHECK(comm.stream() != s.get());
    comm.barrier(30s);
    comm.abort(origin());
  }
#ifdef DUALPIPE_TEST_EMULATED
  int count = 0;
  CHECK(ncclCommCount(owned.get(), &count) != ncclSuccess);  // the emulator keeps the dead handle checkable
#endif
  (void)owned.release();  // aborted: nothing left to finalise
  CHECK_THROWS_AS((void)NcclCommunicator(NcclBorrow{}), ConfigError);
}

TEST_CASE("Gpu.CudaDevice.LentStreams" * doctest::timeout(60)) {
  DUALPIPE_CUDA_CHECK(cudaSetDevice(0));
  Stream a, b;
  CudaDeviceOptions o;
  o.device = 0;
  o.main_stream = a.get();
  o.second_stream = b.get();
  {
    CudaDevice dev(o);
    CHECK(dev.main_stream() == StreamRef(a.get()));
    CHECK(dev.second_stream() == StreamRef(b.get()));
  }
  CHECK(a.ready());  // not destroyed by the device
  o.second_stream = a.get();
  CHECK_THROWS_AS((void)CudaDevice(o), ConfigError);
  o.second_stream = nullptr;  // only the main one lent: the second is its own
  CudaDevice dev(o);
  CHECK(dev.second_stream() != StreamRef(a.get()));
  CHECK(dev.second_stream().get() != nullptr);
}

namespace {
float as_float(float v) { return v; }
float as_float(double v) { return static_cast<float>(v); }
#ifdef DUALPIPE_NCCL_HAS_BF16
float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
#endif
template <class T>
T from_float(float v) {
#ifdef DUALPIPE_NCCL_HAS_BF16
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(v);
  else
#endif
    return static_cast<T>(v);
}
}  // namespace

#ifdef DUALPIPE_NCCL_HAS_BF16
TYPE_TO_STRING(__nv_bfloat16);
#define DUALPIPE_REDUCER_TYPES float, double, __nv_bfloat16
#else
#define DUALPIPE_REDUCER_TYPES float, double
#endif

// A one-copy schedule (1F1B): the group is the dp group; each element type sums exactly (small halves).
TEST_CASE_TEMPLATE("Gpu.NcclGrid.ReducerElementTypes" * doctest::timeout(300), T, DUALPIPE_REDUCER_TYPES) {
  constexpr int P = 2, D = 2, W = P * D;
  constexpr std::size_t n = 8;
  if (cuda_device_count() < W) {
    MESSAGE("needs " << W << " CUDA devices");
    return;
  }
  const ProcessGrid pgrid(W, {.pp = P, .dp = D}, "pp,dp");
  const StageCopies copies = stage_copies<OneFOneB>(P, 4);
  const NcclGridIds ids = NcclGridIds::make(ProcessGrid(W, {.pp = W}, "pp"));  // one world group
  std::vector<std::vector<float>> got(W);
  std::vector<std::string> errors(W);
  run_ranks(W, [&](int r) {
    try {
      DUALPIPE_CUDA_CHECK(cudaSetDevice(r));
      NcclGrid world(ProcessGrid(W, {.pp = W}, "pp"), r, ids, r);  // a world communicator from one id
      NcclGrid grid(pgrid, world.communicator(GridDim::pp));
      const GradientGroup g = gradient_group(pgrid, copies, r);
      CHECK(g.size == D);
      NcclComm comm = grid.split(g.colour, g.key);
      const int d = pgrid.coord(r, GridDim::dp), p = pgrid.coord(r, GridDim::pp);
      std::vector<T> h(n);
      for (std::size_t i = 0; i < n; ++i)
        h[i] = from_float<T>(0.5f * static_cast<float>(d + 1) + static_cast<float>(i + p));
      T* buf = nullptr;
      DUALPIPE_CUDA_CHECK(cudaMalloc(&buf, n * sizeof(T)));
      Stream s;
      DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(buf, h.data(), n * sizeof(T), cudaMemcpyHostToDevice, s.get()));
      {
        NcclGradientReducer<T> reduce(copies, pgrid, r, comm.get(), {std::span<T>(buf, n)});
        reduce.post(0, s.get());
        reduce.finish();
      }
      DUALPIPE_CUDA_CHECK(cudaMemcpy(h.data(), buf, n * sizeof(T), cudaMemcpyDeviceToHost));
      DUALPIPE_CUDA_CHECK(cudaFree(buf));
      for (const T& v : h) got[static_cast<std::size_t>(r)].push_back(as_float(v));
    } catch (const std::exception& e) {
      errors[static_cast<std::size_t>(r)] = e.what();
    }
  });
  for (int r = 0; r < W; ++r) {
    INFO("rank " << r << ": " << errors[static_cast<std::size_t>(r)]);
    REQUIRE(errors[static_cast<std::size_t>(r)].empty());
    const int p = pgrid.coord(r, GridDim::pp);
    for (std::size_t i = 0; i < n; ++i)  // 0.5 * 1 + 0.5 * 2 + 2 (i + p): exact in every type
      CHECK(got[static_cast<std::size_t>(r)][i] == 1.5f + 2.0f * static_cast<float>(i + static_cast<std::size_t>(p)));
  }
}
