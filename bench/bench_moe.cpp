// The FB op of an MoE stage alone (issue 14): does an FB hide its all-to-alls behind the other chunk's
// compute on the host?
//   MoeFB/overlap    DualPipeV on 1 pipeline rank x 2 ep ranks (two threads, the in-process ExpertComm on a
//                    modelled link), 8 chunks: 10 of the rank's 15 compute ops are FBs. The link's latency is
//                    set to the median compute phase of an FB (measured first), so that an all-to-all costs
//                    as much as a compute phase. Each iteration runs one step with overlap on and one
//                    with overlap off; the reported time is the mean FB op with overlap on.
// Counters: fb_on_us, fb_off_us (mean FB op, overlap on / off), compute_us (an FB's compute phases alone),
// fb_over_compute = fb_on / compute (the target: at most 1.15; 1.0 is the limit), a2a_hidden (fraction of the
// FBs' all-to-all time the other chunk computed through; target at least 0.8), fb_speedup = fb_off / fb_on,
// latency_us (the link).
#include <benchmark/benchmark.h>

#ifdef DUALPIPE_BENCH_MOE
#include <algorithm>
#include <array>
#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "common/rank_team.hpp"
#include "dualpipe/dualpipe.hpp"
#include "moe_run.hpp"

namespace {

using namespace dualpipe;
using namespace dualpipe::moe_demo;

void moe_fb(benchmark::State& state) {
  constexpr int E = 2;
  MoeConfig c;
  c.schedule = ScheduleKind::dualpipev;
  c.ranks = 1;
  c.spec.ep = E;
  // h = 2f balances the phases: router ~ T h^2, experts ~ 2T * 2hf, output (shared expert) ~ 2Thf, and the
  // backward's likewise, so that one chunk's compute phase covers the other's all-to-all.
  // Phases of about a millisecond: well above the scheduling noise of two threads on two cores.
  c.spec.tokens = 64;
  c.spec.hidden = 128;
  c.spec.ffn = 64;
  c.spec.chunks = 8;
  validate(c);
  const ProcessGrid grid = moe_grid(c);
  InProcessExpertGroups experts(grid);
  std::vector<std::unique_ptr<LinkedExpertComm<InProcessExpertComm>>> links;
  for (int e = 0; e < E; ++e)
    links.push_back(std::make_unique<LinkedExpertComm<InProcessExpertComm>>(experts.comm(e), ExpertLink{}));
  std::array<RankTimes, E> times{};
  std::array<StepResult, E> last{};
  bool overlap = true;
  benchutil::RankTeam team(E, [&](int e) -> benchutil::RankTeam::StepFn {
    using Stage = MoeStage<LinkedExpertComm<InProcessExpertComm>>;
    using Pipe = Pipeline<DualPipeV, NullCommunicator, Stage>;
    auto comm = std::make_shared<NullCommunicator>(0, 1);
    auto stages = std::make_shared<std::vector<std::unique_ptr<Stage>>>();
    for (int m = 0; m < 2; ++m)
      stages->push_back(std::make_unique<Stage>(c.spec, DualPipeV::placement(1, c.spec.chunks, 0, m).stage, e,
                                                *links[static_cast<std::size_t>(e)]));
    PipelineOptions on, off;
    off.overlap_phases = false;
    auto pipe_on = std::make_shared<Pipe>(*comm, std::array{(*stages)[0].get(), (*stages)[1].get()}, on);
    auto pipe_off = std::make_shared<Pipe>(*comm, std::array{(*stages)[0].get(), (*stages)[1].get()}, off);
    auto data = std::make_shared<std::array<std::vector<double>, 2>>();
    for (int k = 0; k < c.spec.chunks; ++k) {
      const auto x = chunk_data(c.spec, t_input, e, k), y = chunk_data(c.spec, t_label, e, k);
      (*data)[0].insert((*data)[0].end(), x.begin(), x.end());
      (*data)[1].insert((*data)[1].end(), y.begin(), y.end());
    }
    // `comm` is captured too: the pipelines hold it by reference.
    return [=, &times, &last, &overlap, &c] {
      (void)comm;
      const StepResult r =
          (overlap ? pipe_on : pipe_off)
              ->step(c.spec.chunks, std::as_bytes(std::span((*data)[0])), std::as_bytes(std::span((*data)[1])));
      moe_demo::detail::add_times(times[static_cast<std::size_t>(e)], r, overlap);
      last[static_cast<std::size_t>(e)] = r;
      for (auto& s : *stages) s->zero_grad();
    };
  });
  // Calibration: the median compute phase of an FB (the weight gradient aside), free link.
  overlap = true;
  team.step();
  team.step();
  std::vector<double> phases;
  for (const StepResult& r : last)
    for (const PhaseSpan& p : r.phase_spans)
      if (p.what == PhaseSpan::What::compute && p.phase >= 0) phases.push_back(p.end - p.start);
  std::sort(phases.begin(), phases.end());
  const double per_phase = phases.empty() ? 0.0 : phases[phases.size() / 2];
  const ExpertLink link{std::chrono::nanoseconds(static_cast<long long>(per_phase * 1e9)), 0};
  for (auto& l : links) l->set_link(link);
  for (bool o : {true, false}) {  // warm-up with the link
    overlap = o;
    team.step();
  }
  times = {};
  for (auto _ : state) {
    const std::array<RankTimes, E> before = times;
    overlap = true;
    team.step();
    overlap = false;
    team.step();
    double fb = 0;
    for (std::size_t e = 0; e < E; ++e)
      fb += (times[e].fb_on - before[e].fb_on) / std::max(1.0, times[e].fb_on_n - before[e].fb_on_n);
    state.SetIterationTime(fb / E);
  }
  if (team.failures() > 0) state.SkipWithError("a step failed");
  RankTimes sum;
  for (const RankTimes& t : times) {
    sum.fb_on += t.fb_on, sum.fb_on_n += t.fb_on_n, sum.fb_off += t.fb_off, sum.fb_off_n += t.fb_off_n;
    sum.fb_compute += t.fb_compute, sum.exchange += t.exchange, sum.hidden += t.hidden;
  }
  const double on = sum.fb_on / std::max(1.0, sum.fb_on_n), off = sum.fb_off / std::max(1.0, sum.fb_off_n),
               comp = sum.fb_compute / std::max(1.0, sum.fb_on_n);
  state.counters["fb_on_us"] = on * 1e6;
  state.counters["fb_off_us"] = off * 1e6;
  state.counters["compute_us"] = comp * 1e6;
  state.counters["fb_over_compute"] = comp > 0 ? on / comp : 0;
  state.counters["a2a_hidden"] = sum.exchange > 0 ? sum.hidden / sum.exchange : 0;
  state.counters["fb_speedup"] = on > 0 ? off / on : 0;
  state.counters["latency_us"] = per_phase * 1e6;
}
BENCHMARK(moe_fb)->Name("MoeFB/overlap")->UseManualTime()->Unit(benchmark::kMicrosecond)->Iterations(10);

}  // namespace
#endif  // DUALPIPE_BENCH_MOE
