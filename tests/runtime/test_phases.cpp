// Stages with phases (runtime/phases.hpp) and the in-process ExpertComm (comm/inprocess_expert.hpp): the
// all-to-all alone, then a P x E grid of threads running a phased toy stage under every schedule, checked
// against a sequential run, bitwise equal with overlap on and off, interleaved as the contract says, and a
// failure inside an exchange ending every rank's step with a StepError naming rank, chunk and phase.
#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/comm/expert_link.hpp"
#include "dualpipe/comm/inprocess_expert.hpp"
#include "dualpipe/dualpipe.hpp"
#include "dualpipe/runtime/phases.hpp"

using namespace dualpipe;
using namespace std::chrono_literals;

namespace {

std::span<const std::byte> cbytes(const std::vector<double>& v) { return std::as_bytes(std::span(v)); }
std::span<std::byte> mbytes(std::vector<double>& v) { return std::as_writable_bytes(std::span(v)); }

}  // namespace

TEST_CASE("in-process expert all-to-all: per-peer counts, two exchanges in flight, errors") {
  constexpr int E = 3;
  InProcessExpertWorld world(E);
  // Rank r sends r + q + 1 doubles to rank q, valued 100 r + q (+ 1000 for the second exchange).
  auto counts_to = [](int r, int q) { return static_cast<std::size_t>(r + q + 1) * sizeof(double); };
  run_ranks(E, [&](int r) {
    InProcessExpertComm& ec = world.comm(r);
    std::array<std::vector<double>, 2> send, recv;
    std::array<std::vector<std::size_t>, 2> sc, rc;
    std::vector<std::optional<InProcessExpertComm::Handle>> handles;
    for (int x = 0; x < 2; ++x) {
      for (int q = 0; q < E; ++q) {
        sc[x].push_back(counts_to(r, q));
        rc[x].push_back(counts_to(q, r));
        for (int i = 0; i < r + q + 1; ++i) send[x].push_back(100.0 * r + q + 1000.0 * x);
      }
      recv[x].assign(std::accumulate(rc[x].begin(), rc[x].end(), std::size_t{0}) / sizeof(double), -1.0);
      handles.emplace_back(ec.start_all_to_all(ExpertTag{0, r == 1 ? 1 - x : x, 0, 0, false},
                                               {cbytes(send[x]), sc[x], mbytes(recv[x]), rc[x]}));
    }
    // Rank 1 started the tags in the other order: matching is by tag, not order.
    for (auto& h : handles) h->wait(10s);
    for (int x = 0; x < 2; ++x) {
      std::size_t k = 0;
      const int tag_chunk = r == 1 ? 1 - x : x;
      for (int q = 0; q < E; ++q) {
        // Peer q's exchange of the same tag: q == 1 swapped its order.
        const int qx = q == 1 ? 1 - tag_chunk : tag_chunk;
        for (int i = 0; i < q + r + 1; ++i, ++k) CHECK(recv[x][k] == 100.0 * q + r + 1000.0 * qx);
      }
    }
  });
  CHECK(world.pending() == 0);

  SUBCASE("a count that disagrees fails both sides, naming both counts") {
    std::array<std::string, 2> errors;
    InProcessExpertWorld two(2);
    run_ranks(2, [&](int r) {
      std::vector<double> send(2, 1.0), recv(r == 0 ? 2 : 3, 0.0);
      std::vector<std::size_t> sc{8, 8};
      std::vector<std::size_t> rc = r == 0 ? std::vector<std::size_t>{8, 8} : std::vector<std::size_t>{16, 8};
      auto h = two.comm(r).start_all_to_all(ExpertTag{1, 2, 3, 4, true}, {cbytes(send), sc, mbytes(recv), rc});
      try {
        h.wait(10s);
      } catch (const Error& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
    for (const std::string& e : errors) {
      CHECK(e.find("rank 0 sends 8 bytes to rank 1, which expects 16") != std::string::npos);
      CHECK(e.find("(module 1, chunk 2, layer 3, backward phase 4)") != std::string::npos);
    }
  }

  SUBCASE("a peer that never starts: TimeoutError naming it; an abort: CommAborted with its origin") {
    InProcessExpertWorld two(2);
    std::vector<double> send(2, 1.0), recv(2, 0.0);
    std::vector<std::size_t> c{8, 8};
    auto h = two.comm(0).start_all_to_all(ExpertTag{}, {cbytes(send), c, mbytes(recv), c});
    try {
      h.wait(50ms);
      FAIL("no timeout");
    } catch (const TimeoutError& e) {
      CHECK(std::string(e.what()).find("rank(s) 1 never started it") != std::string::npos);
    }
    auto h2 = two.comm(0).start_all_to_all(ExpertTag{0, 1}, {cbytes(send), c, mbytes(recv), c});
    FailureOrigin o;
    o.rank = 7;
    o.what = "boom";
    std::thread t([&] { two.comm(1).abort(o); });
    try {
      h2.wait(10s);
      FAIL("no abort");
    } catch (const CommAborted& e) {
      CHECK(e.origin().rank == 7);
    }
    t.join();
  }
}

namespace {

// A toy stage with phases: `layers` layers; layer l of ep rank e: h = a[l] * x, then an exchange (every rank
// sends h to every rank), then z = (1/E) sum over ranks of h, in rank order. Backward mirrors it; the
// weight gradient da[l] = dot(x_l, g_h) is kept for backward_weight. The last stage's loss is
// 0.5 |z - label|^2.
struct ToyPhased {
  static constexpr int n = 4;  // doubles per chunk per ep rank
};

template <class EC>
struct ToyStage {
  struct ChunkState {
    std::vector<std::vector<double>> x;  // input of each layer
    std::vector<double> cur, send, recv, out, label;
    std::vector<std::vector<double>> gh;  // g_h of each layer (for the weight gradient)
    bool weight_owed = false;
  };

  int stage, ep, E, layers;
  std::vector<double> a, grad;
  EC* ec;
  std::vector<Phase> phase_list;
  std::map<int, ChunkState> state;
  int fail_chunk = -1;   // throw in the exchange of this chunk's forward, layer 0
  int stall_chunk = -1;  // sleep 1.5 s before this chunk's forward exchange (its peers time out)

  ToyStage(int stage_, int ep_, int E_, int layers_, EC& comm)
      : stage(stage_), ep(ep_), E(E_), layers(layers_), grad(static_cast<std::size_t>(layers_), 0.0), ec(&comm) {
    for (int l = 0; l < layers; ++l) {
      a.push_back(1.0 + 0.1 * (ep + 1) + 0.01 * l + 0.05 * stage);
      phase_list.push_back({PhaseKind::compute, l, "scale"});
      phase_list.push_back({PhaseKind::exchange, l, "mix"});
      phase_list.push_back({PhaseKind::compute, l, "sum"});
    }
  }
  static constexpr std::size_t bytes = ToyPhased::n * sizeof(double);
  [[nodiscard]] std::size_t input_bytes() const { return bytes; }
  [[nodiscard]] std::size_t output_bytes() const { return bytes; }
  [[nodiscard]] std::size_t label_bytes() const { return bytes; }
  EC& expert_comm() { return *ec; }

  std::span<const Phase> phases(const StageContext&, Pass) const { return phase_list; }

  void compute_phase(const StageContext& ctx, Pass pass, int i, PhaseIo io) {
    ChunkState& s = state[ctx.chunk];
    const int l = pass == Pass::forward ? i / 3 : layers - 1 - i / 3;
    const auto L = static_cast<std::size_t>(l);
    const bool first = i % 3 == 0;
    if (pass == Pass::forward) {
      if (first) {
        if (l == 0) {
          s.cur.assign(ToyPhased::n, 0.0);
          std::memcpy(s.cur.data(), io.in.data(), bytes);
          s.x.assign(static_cast<std::size_t>(layers), {});
        }
        s.x[L] = s.cur;
        for (double& v : s.cur) v *= a[L];
      } else {
        sum_recv(s);
        if (l == layers - 1) {
          std::memcpy(io.out.data(), s.cur.data(), bytes);
          s.out = s.cur;
        }
      }
    } else {
      if (first) {
        if (l == layers - 1) {
          s.cur.assign(ToyPhased::n, 0.0);
          if (ctx.is_last_stage)
            for (int k = 0; k < ToyPhased::n; ++k) s.cur[k] = (s.out[k] - s.label[k]) * ctx.loss_scale;
          else std::memcpy(s.cur.data(), io.in.data(), bytes);
          s.gh.assign(static_cast<std::size_t>(layers), {});
        }
      } else {
        sum_recv(s);  // g_h
        s.gh[L] = s.cur;
        for (double& v : s.cur) v *= a[L];
        if (l == 0) {
          if (!io.out.empty()) std::memcpy(io.out.data(), s.cur.data(), bytes);
          s.weight_owed = true;
        }
      }
    }
  }

  void sum_recv(ChunkState& s) {
    for (int k = 0; k < ToyPhased::n; ++k) {
      double z = 0;
      for (int q = 0; q < E; ++q) z += s.recv[static_cast<std::size_t>(q * ToyPhased::n + k)];
      s.cur[static_cast<std::size_t>(k)] = z / E;
    }
  }

  std::vector<std::size_t> counts = std::vector<std::size_t>(16, bytes);
  AllToAllBuffers exchange_phase(const StageContext& ctx, Pass pass, int, PhaseIo) {
    ChunkState& s = state[ctx.chunk];
    if (pass == Pass::forward && ctx.chunk == fail_chunk) throw std::runtime_error("injected exchange failure");
    if (pass == Pass::forward && ctx.chunk == stall_chunk) {
      stall_chunk = -1;
      std::this_thread::sleep_for(1500ms);
    }
    s.send.clear();
    for (int q = 0; q < E; ++q) s.send.insert(s.send.end(), s.cur.begin(), s.cur.end());
    s.recv.assign(s.send.size(), 0.0);
    const std::span<const std::size_t> c(counts.data(), static_cast<std::size_t>(E));
    return {cbytes(s.send), c, mbytes(s.recv), c};
  }

  // The Stage members (never called by the executor for a stage with phases).
  void forward(const StageContext& ctx, ConstBytes in, MutableBytes out) {
    run_phases(*this, ctx, Pass::forward, {in, out}, 10s);
  }
  void backward_input(const StageContext& ctx, ConstBytes g, MutableBytes ig) {
    run_phases(*this, ctx, Pass::backward, {g, ig}, 10s);
  }
  double loss(const StageContext& ctx, ConstBytes, ConstBytes labels) {
    ChunkState& s = state[ctx.chunk];
    s.label.assign(ToyPhased::n, 0.0);
    std::memcpy(s.label.data(), labels.data(), bytes);
    double l = 0;
    for (int k = 0; k < ToyPhased::n; ++k) l += 0.5 * (s.out[k] - s.label[k]) * (s.out[k] - s.label[k]);
    return l;
  }
  void backward_weight(const StageContext& ctx) {
    ChunkState& s = state.at(ctx.chunk);
    REQUIRE(s.weight_owed);
    for (int l = 0; l < layers; ++l) {
      const auto L = static_cast<std::size_t>(l);
      for (int k = 0; k < ToyPhased::n; ++k)
        grad[L] += s.x[L][static_cast<std::size_t>(k)] * s.gh[L][static_cast<std::size_t>(k)];
    }
    state.erase(ctx.chunk);
  }
};

static_assert(check_phased_stage<ToyStage<InProcessExpertComm>>());

double input_value(int e, int c, int k) { return std::sin(1.0 + e + 0.7 * c + 0.3 * k); }
double label_value(int e, int c, int k) { return std::cos(2.0 + 0.5 * e + 0.9 * c + 0.2 * k); }

struct ToyResult {
  std::vector<double> losses;              // [e][c]
  std::vector<std::vector<double>> grads;  // [e][stage * layers + l], summed over copies
};

// The whole model on one thread: every ep rank's chunk, every stage and layer.
ToyResult sequential(int S, int E, int layers, int C) {
  ToyResult r;
  r.grads.assign(static_cast<std::size_t>(E), std::vector<double>(static_cast<std::size_t>(S * layers), 0.0));
  auto a_of = [&](int s, int e, int l) { return 1.0 + 0.1 * (e + 1) + 0.01 * l + 0.05 * s; };
  const int n = ToyPhased::n;
  for (int e = 0; e < E; ++e) r.losses.resize(static_cast<std::size_t>(E * C));
  for (int c = 0; c < C; ++c) {
    std::vector<std::vector<double>> x(static_cast<std::size_t>(E), std::vector<double>(n));
    for (int e = 0; e < E; ++e)
      for (int k = 0; k < n; ++k) x[e][k] = input_value(e, c, k);
    std::vector<std::vector<std::vector<double>>> xs;  // [s*layers+l][e]
    for (int s = 0; s < S; ++s)
      for (int l = 0; l < layers; ++l) {
        xs.push_back(x);
        std::vector<double> z(n, 0.0);
        for (int k = 0; k < n; ++k) {
          for (int e = 0; e < E; ++e) z[k] += a_of(s, e, l) * x[e][k];
          z[k] /= E;
        }
        for (int e = 0; e < E; ++e) x[e] = z;
      }
    std::vector<std::vector<double>> g(static_cast<std::size_t>(E), std::vector<double>(n));
    for (int e = 0; e < E; ++e) {
      double loss = 0;
      for (int k = 0; k < n; ++k) {
        const double d = x[e][k] - label_value(e, c, k);
        loss += 0.5 * d * d;
        g[e][k] = d;
      }
      r.losses[static_cast<std::size_t>(e * C + c)] = loss;
    }
    for (int sl = S * layers - 1; sl >= 0; --sl) {
      std::vector<double> gh(n, 0.0);
      for (int k = 0; k < n; ++k) {
        for (int e = 0; e < E; ++e) gh[k] += g[e][k];
        gh[k] /= E;
      }
      for (int e = 0; e < E; ++e) {
        const double a = a_of(sl / layers, e, sl % layers);
        for (int k = 0; k < n; ++k) {
          r.grads[e][sl] += xs[sl][e][k] * gh[k];
          g[e][k] = a * gh[k];
        }
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

// P pipeline ranks x E ep ranks of threads; ep fastest (grid rank = e + E p).
template <class Schedule>
struct ToyGrid {
  using Stage = ToyStage<InProcessExpertComm>;
  using Pipe = Pipeline<Schedule, InProcessCommunicator, Stage>;
  static constexpr int M = Schedule::modules_per_rank;
  int P, E, C, layers, S;
  ProcessGrid grid;
  InProcessGrid comms;
  InProcessExpertGroups experts;
  std::vector<std::vector<std::unique_ptr<Stage>>> stages;  // [grid rank][module]
  std::vector<std::unique_ptr<Pipe>> pipes;
  std::vector<std::vector<double>> inputs, labels;  // [e]

  ToyGrid(int P_, int E_, int C_, int layers_, bool overlap, std::chrono::milliseconds timeout = 20s)
      : P(P_), E(E_), C(C_), layers(layers_), S(Schedule::placement(P_, C_, 0, 0).num_stages),
        grid(P_ * E_, GridSizes{.pp = P_, .ep = E_}, "ep,pp"), comms(grid), experts(grid) {
    PipelineOptions opt;
    opt.timeout = timeout;
    opt.overlap_phases = overlap;
    for (int g = 0; g < P * E; ++g) {
      const int p = grid.coord(g, GridDim::pp), e = grid.coord(g, GridDim::ep);
      stages.emplace_back();
      std::array<Stage*, M> ptrs{};
      for (int m = 0; m < M; ++m) {
        const auto pl = Schedule::placement(P, C, p, m);
        stages.back().push_back(std::make_unique<Stage>(pl.stage, e, E, layers, experts.comm(g)));
        ptrs[static_cast<std::size_t>(m)] = stages.back().back().get();
      }
      pipes.push_back(std::make_unique<Pipe>(comms.communicator(GridDim::pp, g), ptrs, opt));
    }
    for (int e = 0; e < E; ++e) {
      inputs.emplace_back();
      labels.emplace_back();
      for (int c = 0; c < C; ++c)
        for (int k = 0; k < ToyPhased::n; ++k) {
          inputs.back().push_back(input_value(e, c, k));
          labels.back().push_back(label_value(e, c, k));
        }
    }
  }

  std::vector<StepResult> step() {
    std::vector<StepResult> results(static_cast<std::size_t>(P * E));
    run_ranks(P * E, [&](int g) {
      const int e = grid.coord(g, GridDim::ep);
      results[static_cast<std::size_t>(g)] =
          pipes[static_cast<std::size_t>(g)]->step(C, cbytes(inputs[e]), cbytes(labels[e]));
    });
    return results;
  }

  ToyResult collect(const std::vector<StepResult>& results) const {
    ToyResult r;
    r.losses.assign(static_cast<std::size_t>(E * C), 0.0);
    r.grads.assign(static_cast<std::size_t>(E), std::vector<double>(static_cast<std::size_t>(S * layers), 0.0));
    for (int g = 0; g < P * E; ++g) {
      const int e = grid.coord(g, GridDim::ep);
      for (int c = 0; c < C; ++c) {
        const double l = results[static_cast<std::size_t>(g)].losses[static_cast<std::size_t>(c)];
        if (!std::isnan(l)) r.losses[static_cast<std::size_t>(e * C + c)] += l;
      }
      for (const auto& st : stages[static_cast<std::size_t>(g)])
        for (int l = 0; l < layers; ++l) r.grads[e][st->stage * layers + l] += st->grad[static_cast<std::size_t>(l)];
    }
    return r;
  }
};

template <class Schedule>
void check_schedule(int P, int E, int C) {
  CAPTURE(Schedule::name);
  const int layers = 2;
  std::optional<ToyResult> on_result;
  for (bool overlap : {true, false}) {
    CAPTURE(overlap);
    ToyGrid<Schedule> g(P, E, C, layers, overlap);
    const auto results = g.step();
    const ToyResult got = g.collect(results);
    const ToyResult want = sequential(g.S, E, layers, C);
    CHECK(max_rel(got.losses, want.losses) <= 1e-12);
    for (int e = 0; e < E; ++e) CHECK(max_rel(got.grads[e], want.grads[e]) <= 1e-12);
    for (int r = 0; r < P * E; ++r) CHECK(g.experts.world(r).pending() == 0);
    if (overlap) {
      on_result = got;
      // The interleaving, from the recorded order (not timing): in some FB, a compute phase of the backward
      // chunk began after the forward chunk's exchange started and before its wait ended.
      bool hidden = false, has_fb = false;
      for (const StepResult& r : results)
        for (const PhaseSpan& x : r.phase_spans) {
          if (x.what != PhaseSpan::What::exchange || x.second_lane) continue;
          for (const PhaseSpan& y : r.phase_spans)
            if (y.index == x.index && y.second_lane) {
              has_fb = true;
              if (y.what == PhaseSpan::What::compute && y.start >= x.start && y.end <= x.end) hidden = true;
            }
        }
      CHECK(has_fb == (Schedule::modules_per_rank == 2));  // the bidirectional schedules have FB ops
      CHECK(hidden == has_fb);
    } else {
      // Bitwise: the same numbers in the same order either way.
      for (std::size_t i = 0; i < got.losses.size(); ++i) CHECK(got.losses[i] == on_result->losses[i]);
      for (int e = 0; e < E; ++e) CHECK(got.grads[e] == on_result->grads[e]);
      for (const StepResult& r : results)
        for (const PhaseSpan& x : r.phase_spans)
          if (x.what == PhaseSpan::What::exchange && !x.second_lane)
            for (const PhaseSpan& y : r.phase_spans)
              if (y.index == x.index && y.second_lane) CHECK(y.start >= x.end);
    }
  }
}

}  // namespace

TEST_CASE("phased stages on a P x E grid equal the sequential run under every schedule, overlap on and off") {
  check_schedule<DualPipe>(2, 2, 6);
  check_schedule<DualPipeV>(2, 2, 6);
  check_schedule<OneFOneB>(2, 2, 4);
  check_schedule<ZB1P>(2, 2, 4);
  check_schedule<DualPipe>(4, 3, 8);
}

TEST_CASE("a failure inside an exchange phase ends every rank's step with a StepError naming rank, chunk and phase") {
  ToyGrid<DualPipe> g(2, 2, 6, 2, true);
  // Grid rank 3 = (pp 1, ep 1): its module 0 fails in the forward exchange of chunk 1.
  g.stages[3][0]->fail_chunk = 1;
  std::vector<std::string> errors(4);
  run_ranks(4, [&](int r) {
    const int e = g.grid.coord(r, GridDim::ep);
    try {
      (void)g.pipes[static_cast<std::size_t>(r)]->step(g.C, cbytes(g.inputs[e]), cbytes(g.labels[e]));
    } catch (const StepError& err) {
      errors[static_cast<std::size_t>(r)] = err.what();
    }
  });
  for (const std::string& e : errors) {
    CAPTURE(e);
    CHECK(e.find("rank 1, module 0, chunk 1, op ") != std::string::npos);
    CHECK(e.find("forward phase 1 (mix) of layer 0: injected exchange failure") != std::string::npos);
  }
}

TEST_CASE("a peer that never starts an exchange: its group times out naming the phase, and every rank's step ends") {
  ToyGrid<DualPipe> g(2, 2, 6, 2, true, 300ms);
  g.stages[2][0]->stall_chunk = 0;  // grid rank 2 = (pp 1, ep 0)
  std::vector<std::string> errors(4);
  run_ranks(4, [&](int r) {
    const int e = g.grid.coord(r, GridDim::ep);
    try {
      (void)g.pipes[static_cast<std::size_t>(r)]->step(g.C, cbytes(g.inputs[e]), cbytes(g.labels[e]));
    } catch (const StepError& err) {
      errors[static_cast<std::size_t>(r)] = err.what();
    }
  });
  // Which waits give up first (the stalled rank's expert peer, a pipeline neighbour waiting for it) is a race,
  // and two groups may time out on their own; every rank's step must end with a StepError, and an origin in the
  // exchange names its phase and the rank that never started it.
  for (const std::string& e : errors) {
    CAPTURE(e);
    REQUIRE(e.find("dualpipe step failed on rank ") == 0);
    if (e.find("expert all-to-all") != std::string::npos)
      CHECK(e.find("forward phase 1 (mix) of layer 0: expert all-to-all (module 0, chunk 0, layer 0, forward phase 1): "
                   "rank 1 timed out after 300 ms; rank(s) 0 never started it") != std::string::npos);
    else CHECK(e.find("timed out after 300 ms") != std::string::npos);
  }
}

TEST_CASE("an exchange on a modelled link takes at least its cost") {
  InProcessExpertWorld world(1);
  LinkedExpertComm<InProcessExpertComm> ec(world.comm(0), ExpertLink{20ms, 0});
  static_assert(check_expert_comm<LinkedExpertComm<InProcessExpertComm>>());
  std::vector<double> send(1, 3.0), recv(1, 0.0);
  std::vector<std::size_t> c{8};
  const auto t0 = std::chrono::steady_clock::now();
  auto h = ec.start_all_to_all(ExpertTag{}, {cbytes(send), c, mbytes(recv), c});
  h.wait(1s);
  CHECK(std::chrono::steady_clock::now() - t0 >= 20ms);  // a lower bound only: never flaky
  CHECK(recv[0] == 3.0);
  CHECK_THROWS_AS(LinkedExpertComm<InProcessExpertComm>(world.comm(0), ExpertLink{-1ms, 0}), ConfigError);
}
