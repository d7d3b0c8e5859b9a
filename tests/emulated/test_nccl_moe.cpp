// Emulated NCCL: a PP=2 x EP=2 world of 4 emulated GPUs runs DualPipe with a device MoE-like stage with
// phases (runtime/phases.hpp): per layer a dense layer, a dispatch all-to-all with per-peer counts, a
// per-expert layer, a combine all-to-all and a residual; its backward mirrors it. The pipeline's transfers
// are NcclCommunicator's, the exchanges NcclExpertComm's under the ordering rule (on their own stream, or on
// CudaDevice's communication stream, the pipeline's), the compute on CudaDevice's two streams; the executor
// waits for no exchange on the host. Checked against a sequential run of the whole model on the host, and
// for 200 steps with the emulator's jitter (its race checker and hang limit watching every one), each
// bitwise equal to the first.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emulator.hpp"
#include "device_moe_stage.hpp"
#include "dualpipe/nccl.hpp"

using namespace dualpipe;
using namespace moetest;
using namespace std::chrono_literals;

namespace {

struct ModelResult {
  std::vector<double> losses;              // [e * C + c]
  std::vector<std::vector<double>> grads;  // [e][2 * (stage * layers + l) + {0 dense, 1 expert}]
};

// The whole model on one thread, every ep rank's tokens together.
ModelResult sequential(int S, int E, int layers, int C) {
  ModelResult r;
  r.losses.assign(static_cast<std::size_t>(E * C), 0.0);
  r.grads.assign(static_cast<std::size_t>(E), std::vector<double>(static_cast<std::size_t>(2 * S * layers), 0.0));
  const auto ue = static_cast<std::size_t>(E);
  for (int c = 0; c < C; ++c) {
    using Tokens = std::vector<std::vector<double>>;  // [e][k]
    Tokens x(ue, std::vector<double>(kTokens));
    for (int e = 0; e < E; ++e)
      for (int k = 0; k < kTokens; ++k) x[e][k] = input_value(e, c, k);
    struct Saved {
      Tokens x, h;
    };
    std::vector<Saved> saved;
    for (int s = 0; s < S; ++s)
      for (int l = 0; l < layers; ++l) {
        Tokens h = x, z = x;
        for (int e = 0; e < E; ++e)
          for (int k = 0; k < kTokens; ++k) h[e][k] = dense_weight(s, e, l) * x[e][k];
        for (int q = 0; q < E; ++q)
          for (int k = 0; k < kTokens; ++k) {
            const int d = destination(k, q, l, s, E);
            z[q][k] = expert_weight(s, d, l) * h[q][k] + h[q][k];
          }
        saved.push_back({x, h});
        x = z;
      }
    Tokens g(ue, std::vector<double>(kTokens));
    for (int e = 0; e < E; ++e)
      for (int k = 0; k < kTokens; ++k) {
        const double d = x[e][k] - label_value(e, c, k);
        r.losses[static_cast<std::size_t>(e * C + c)] += 0.5 * d * d;
        g[e][k] = d;
      }
    for (int sl = S * layers - 1; sl >= 0; --sl) {
      const int s = sl / layers, l = sl % layers;
      const Saved& sv = saved[static_cast<std::size_t>(sl)];
      // The expert's gradient, summed in the expert's receive order: by source rank, then token.
      for (int e = 0; e < E; ++e) {
        double acc = 0;
        for (int q = 0; q < E; ++q)
          for (int k = 0; k < kTokens; ++k)
            if (destination(k, q, l, s, E) == e) acc += sv.h[q][k] * g[q][k];
        r.grads[e][static_cast<std::size_t>(2 * sl + 1)] += acc;
      }
      for (int q = 0; q < E; ++q) {
        double acc = 0;
        for (int k = 0; k < kTokens; ++k) {
          const double gh = expert_weight(s, destination(k, q, l, s, E), l) * g[q][k] + g[q][k];
          acc += sv.x[q][k] * gh;
          g[q][k] = dense_weight(s, q, l) * gh;
        }
        r.grads[q][static_cast<std::size_t>(2 * sl)] += acc;
      }
    }
  }
  return r;
}

double max_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return den > 0 ? num / den : num;
}

struct RankRun {
  std::vector<std::vector<double>> losses;                // per step
  std::vector<std::array<std::vector<double>, 2>> grads;  // per step, per module
  std::array<int, 2> stage{};
  std::string error;
  long exchanges = 0;
  long host_waits = -1;
};

// PP=P x EP=E ranks (grid rank g = e + E p), DualPipe, `steps` steps; each step from zeroed gradients.
// `one_stream`: the exchanges on the pipeline communicator's stream (CudaDevice's communication stream)
// instead of their own stream ordered by the rule's events.
std::vector<RankRun> run_world(int P, int E, int layers, int C, int steps, bool overlap, int fail_rank = -1,
                               std::chrono::milliseconds timeout = 60s, bool one_stream = false) {
  const int W = P * E;
  const ProcessGrid pgrid(W, {.pp = P, .ep = E}, "ep,pp");
  const ncclUniqueId world_id = make_unique_id();
  std::vector<RankRun> out(static_cast<std::size_t>(W));
  run_ranks(W, [&](int g) {
    RankRun& me = out[static_cast<std::size_t>(g)];
    try {
      DUALPIPE_CUDA_CHECK(cudaSetDevice(g));
      ncclComm_t raw = nullptr;
      DUALPIPE_NCCL_CHECK(ncclCommInitRank(&raw, W, world_id, g));
      NcclComm world(raw);
      NcclGrid grid(pgrid, world.get());
      const int p = pgrid.coord(g, GridDim::pp), e = pgrid.coord(g, GridDim::ep);
      NcclCommunicator pipe_comm(NcclBorrow{grid.communicator(GridDim::pp), nullptr});
      NcclExpertOptions eo;
      eo.pipeline = &pipe_comm;  // the rule on its stream; a failed exchange fails the step's barrier
      if (one_stream) eo.stream = pipe_comm.stream();
      eo.report_rank = g;
      eo.timeout = timeout;
      NcclExpertComm ep(NcclBorrow{grid.communicator(GridDim::ep)}, eo);
      std::vector<std::unique_ptr<DeviceMoeStage>> stages;
      for (int m = 0; m < 2; ++m) {
        const ModulePlacement pl = DualPipe::placement(P, C, p, m);
        stages.push_back(std::make_unique<DeviceMoeStage>(pl.stage, e, E, layers, pl.num_chunks, ep));
        me.stage[static_cast<std::size_t>(m)] = pl.stage;
      }
      if (g == fail_rank) stages[0]->fail_chunk = 1;
      std::vector<double> in, lab;
      for (int c = 0; c < C; ++c)
        for (int k = 0; k < kTokens; ++k) {
          in.push_back(input_value(e, c, k));
          lab.push_back(label_value(e, c, k));
        }
      double *d_in = nullptr, *d_lab = nullptr;
      DUALPIPE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&d_in), in.size() * sizeof(double)));
      DUALPIPE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&d_lab), lab.size() * sizeof(double)));
      DUALPIPE_CUDA_CHECK(cudaMemcpy(d_in, in.data(), in.size() * sizeof(double), cudaMemcpyHostToDevice));
      DUALPIPE_CUDA_CHECK(cudaMemcpy(d_lab, lab.data(), lab.size() * sizeof(double), cudaMemcpyHostToDevice));
      {
        PipelineOptions po;
        po.timeout = timeout;
        po.overlap_phases = overlap;
        CudaDeviceOptions dopt;
        dopt.device = g;
        Pipeline<DualPipe, NcclCommunicator, DeviceMoeStage, CudaDevice> pipe(
            pipe_comm, {stages[0].get(), stages[1].get()}, po, CudaDevice(dopt));
        for (int step = 0; step < steps; ++step) {
          for (auto& s : stages) s->zero_grad();
          const StepResult r = pipe.step(C, bytes_of(d_in, in.size()), bytes_of(d_lab, lab.size()));
          me.losses.push_back(r.losses);
          me.grads.push_back({stages[0]->grads(), stages[1]->grads()});
        }
      }
      me.exchanges = ep.exchanges();
      me.host_waits = ep.host_waits();
      ignore_cuda_error(cudaFree(d_in));
      ignore_cuda_error(cudaFree(d_lab));
    } catch (const std::exception& ex) {
      me.error = ex.what();
    }
  });
  return out;
}

ModelResult collect(const std::vector<RankRun>& runs, int P, int E, int layers, int C, int step) {
  const ProcessGrid pgrid(P * E, {.pp = P, .ep = E}, "ep,pp");
  const int S = P;
  ModelResult r;
  r.losses.assign(static_cast<std::size_t>(E * C), 0.0);
  r.grads.assign(static_cast<std::size_t>(E), std::vector<double>(static_cast<std::size_t>(2 * S * layers), 0.0));
  for (int g = 0; g < P * E; ++g) {
    const RankRun& run = runs[static_cast<std::size_t>(g)];
    const int e = pgrid.coord(g, GridDim::ep);
    const auto k = static_cast<std::size_t>(step);
    for (int c = 0; c < C; ++c) {
      const double l = run.losses[k][static_cast<std::size_t>(c)];
      if (!std::isnan(l)) r.losses[static_cast<std::size_t>(e * C + c)] += l;
    }
    for (std::size_t m = 0; m < 2; ++m)
      for (int i = 0; i < 2 * layers; ++i)
        r.grads[e][static_cast<std::size_t>(2 * run.stage[m] * layers + i)] +=
            run.grads[k][m][static_cast<std::size_t>(i)];
  }
  return r;
}

// Equal bits (a rank's losses are NaN for the chunks whose loss another rank computes).
bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

std::string text(const std::vector<double>& v) {
  std::string out;
  for (double x : v) out += std::to_string(x) + " ";
  return out;
}

int steps_from_env(int fallback) {
  const char* v = std::getenv("DUALPIPE_TEST_MOE_STEPS");
  return v ? std::max(1, std::atoi(v)) : fallback;
}

}  // namespace

TEST_CASE("Emulated.NcclMoe.DualPipePp2Ep2EqualsTheSequentialRunFor200Steps" * doctest::timeout(900)) {
  constexpr int P = 2, E = 2, layers = 2, C = 6;
  const int steps = steps_from_env(200);
  const ModelResult want = sequential(P, E, layers, C);
  std::vector<RankRun> first;
  // Overlap on (`steps` steps), off (1 step), on with the exchanges on the communication stream (20 steps).
  for (const int run : {0, 1, 2}) {
    const bool overlap = run != 1, one_stream = run == 2;
    CAPTURE(overlap);
    CAPTURE(one_stream);
    const int n = run == 0 ? steps : run == 1 ? 1 : std::min(steps, 20);
    const std::vector<RankRun> runs = run_world(P, E, layers, C, n, overlap, -1, 60s, one_stream);
    for (int g = 0; g < P * E; ++g) {
      const RankRun& r = runs[static_cast<std::size_t>(g)];
      INFO("rank " << g << ": " << r.error);
      REQUIRE(r.error.empty());
      // Every step the same bits: no race, no lost ordering, whatever the emulator's jitter did.
      int differing = 0;
      for (std::size_t s = 1; s < r.losses.size(); ++s)
        if (!same_bits(r.losses[s], r.losses[0]) || r.grads[s] != r.grads[0]) ++differing;
      CHECK(differing == 0);
      // Two modules x C/2 chunks... every exchange phase of every chunk: 2 per layer per pass, per step.
      CHECK(r.exchanges == static_cast<long>(r.losses.size()) * C * 2 * layers * 2);
      CHECK(r.host_waits == 0);  // the executor's waits were all on the device
    }
    const ModelResult got = collect(runs, P, E, layers, C, 0);
    CHECK(max_rel(got.losses, want.losses) <= 1e-12);
    for (int e = 0; e < E; ++e) {
      INFO("got " << text(got.grads[e]) << " want " << text(want.grads[e]));
      CHECK(max_rel(got.grads[e], want.grads[e]) <= 1e-12);
    }
    if (run == 0) {
      first = runs;
    } else {  // overlap off, or another stream: the same numbers in the same order, bitwise equal
      for (int g = 0; g < P * E; ++g) {
        CHECK(same_bits(runs[static_cast<std::size_t>(g)].losses[0], first[static_cast<std::size_t>(g)].losses[0]));
        CHECK(runs[static_cast<std::size_t>(g)].grads[0] == first[static_cast<std::size_t>(g)].grads[0]);
      }
    }
  }
}

TEST_CASE("Emulated.NcclMoe.AFailureInAnExchangePhaseEndsEveryRanksStep" * doctest::timeout(300)) {
  constexpr int P = 2, E = 2;
  // Grid rank 3 (pp 1, ep 1): its module 0's forward exchange of chunk 1 throws.
  const std::vector<RankRun> runs = run_world(P, E, 2, 6, 1, true, 3, 2s);
  for (int g = 0; g < P * E; ++g) {
    const std::string& e = runs[static_cast<std::size_t>(g)].error;
    INFO("rank " << g << ": " << e);
    CHECK(e.find("dualpipe step failed") != std::string::npos);
  }
  const std::string& origin = runs[3].error;
  CHECK(origin.find("rank 1, module 0, chunk 1, op ") != std::string::npos);
  CHECK(origin.find("forward phase 1 (dispatch) of layer 0: injected exchange failure") != std::string::npos);
}
