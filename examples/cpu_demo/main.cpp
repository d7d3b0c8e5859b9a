// dualpipe-cpu-demo: trains a small MLP with DualPipe, DualPipeV, 1F1B and ZB1P on threads, checks each
// step against a sequential run, prints what it measured, and writes the timelines when asked.
// Run with --help for the options; exit status 0 pass, 1 a failed check or step, 2 bad arguments.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "demo.hpp"
#include "dualpipe/analysis/render_chrome.hpp"
#include "dualpipe/analysis/render_svg.hpp"
#include "example_cli.hpp"
#include "options.hpp"
#ifdef DUALPIPE_HAS_MPI
#include "mpi_run.hpp"  // --comm mpi: one rank per process
#endif

using namespace dualpipe;
using namespace dualpipe::cpu_demo;

namespace {

void print_report(const DemoConfig& cfg, const DemoReport& r) {
  std::printf("\n== %s: %d ranks, %d stages", r.schedule.c_str(), r.ranks, r.stages);
  if (r.copies > 1) std::printf(" (%d copies of each)", r.copies);
  if (r.dp > 1) std::printf(", x %d replicas (%d ranks in all; the table: replica 0)", r.dp, r.ranks * r.dp);
  std::printf(", %d chunks of %d rows per step, hidden %d, %d steps", r.chunks, cfg.model.rows, cfg.model.hidden,
              r.steps);
  if (r.accumulate > 1) std::printf(" of %d accumulated pipeline steps", r.accumulate);
  std::printf(", lr %g, loss scale 1/%d\n", cfg.model.lr, r.chunks * r.dp * r.accumulate);
  std::printf("   %-30s", "loss sum over chunks, by step:");
  for (double l : r.step_loss_sums) std::printf(" %.9f", l);
  std::printf("\n   %-30s", r.accumulate > 1 ? "pipeline step time, slowest (ms):" : "step time, slowest rank (ms):");
  for (double s : r.step_seconds) std::printf(" %.3f", s * 1e3);
  std::printf("\n");
  const double makespan = r.timeline.makespan();
  std::printf("   last step, measured (makespan %.3f ms):\n", makespan * 1e3);
  std::printf(
      "   %4s %9s %9s %7s %10s %8s %8s %8s   (ops per step: FB via forward_backward hook, B via fused\n"
      "   %4s %9s %9s %7s %10s %8s %8s %8s    backward, W = deferred backward_weight)\n",
      "rank", "busy ms", "idle ms", "idle %", "peak bufs", "FB", "B", "W", "", "", "", "", "", "", "", "");
  for (const RankReport& rr : r.per_rank)
    std::printf("   %4d %9.3f %9.3f %6.1f%% %10zu %8ld %8ld %8ld\n", rr.rank, rr.busy_seconds * 1e3,
                rr.idle_seconds * 1e3, makespan > 0 ? 100.0 * rr.idle_seconds / makespan : 0.0, rr.peak_buffers,
                rr.overlapped_calls / (r.steps * r.accumulate), rr.fused_backward_calls / (r.steps * r.accumulate),
                rr.deferred_weight_calls / (r.steps * r.accumulate));
  std::printf("   bubble ratio (idle / (ranks x makespan)): %.3f\n", r.timeline.bubble_ratio());
  std::printf("   %s\n", profile_line(r).c_str());
  for (const std::string& p : r.problems) std::printf("   check failed: %s\n", p.c_str());
  std::printf("%s\n", result_line(r).c_str());
  std::fflush(stdout);
}

/// Runs one schedule with the chosen communicator; the report comes back on the process that prints
/// (always, in-process; rank 0 alone with one rank per process).
std::optional<DemoReport> run_one(const DemoConfig& cfg, const ProgramOptions& options) {
  if (options.comm == "inproc") return run_demo_inproc(cfg);
#ifdef DUALPIPE_HAS_MPI
  if (options.comm == "mpi") return run_demo_mpi(cfg);
#endif
  throw ConfigError("unknown --comm '" + options.comm + "'");
}

using examples::write_file;

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  ProgramOptions options;
  std::vector<DemoConfig> configs;
  try {
    options = parse_options(args);
    if (options.help) {
      std::fputs(usage().c_str(), stdout);
      return 0;
    }
    configs = make_configs(options);
#ifndef DUALPIPE_HAS_MPI
    if (options.comm == "mpi")
      throw ConfigError(
          "--comm mpi: this dualpipe-cpu-demo was built without MPI (configure with an MPI installed "
          "and DUALPIPE_ENABLE_MPI=ON)");
#endif
    if (!options.trace_dir.empty()) examples::make_trace_dir(options.trace_dir);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "dualpipe-cpu-demo: error: %s\n", e.what());
    return 2;
  }

#ifdef DUALPIPE_HAS_MPI
  // With --comm mpi: MPI lives for the rest of main (finalized at return); only world rank 0 prints.
  std::optional<MpiSession> mpi_session;
  if (options.comm == "mpi") mpi_session.emplace();
  const bool prints = mpi_prints();
#else
  const bool prints = true;
#endif
  if (prints)
    std::printf("dualpipe-cpu-demo: MLP stages Linear(h,4h) -> GELU(erf) -> Linear(4h,h), double, comm=%s\n",
                options.comm.c_str());
  if (prints)
    std::printf(
        "checked every step against a sequential run: max relative error = max over tensors of "
        "max|a-b| / max|b| (normwise)\n");
  std::vector<DemoReport> reports;
  for (const DemoConfig& cfg : configs) {
    const std::string name(schedule_name(cfg.schedule));
    try {
      std::optional<DemoReport> got = run_one(cfg, options);
      if (!got) continue;
      DemoReport r = std::move(*got);
      print_report(cfg, r);
      if (!options.trace_dir.empty()) {
        const std::filesystem::path dir(options.trace_dir);
        write_file(dir / (name + ".svg"), render_svg(r.timeline));
        write_file(dir / (name + ".json"), render_chrome_trace(r.timeline));
      }
      reports.push_back(std::move(r));
    } catch (const StepError& e) {
      // The message names the rank, module, chunk and op where the failure started.
      std::fprintf(stderr, "dualpipe-cpu-demo: %s: %s\n", name.c_str(), e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "dualpipe-cpu-demo: %s: %s\n", name.c_str(), e.what());
      return 1;
    }
  }

  if (reports.empty()) return 0;  // a process that does not print (one rank per process, not rank 0)
  std::printf("\nsummary (last step; same %d-stage model for every schedule unless --v-ranks):\n", options.ranks);
  std::printf("  %-10s %5s %6s %9s %7s %10s %12s %6s\n", "schedule", "ranks", "stages", "step ms", "bubble",
              "peak bufs", "max rel err", "check");
  bool all_pass = true;
  for (const DemoReport& r : reports) {
    std::size_t peak = 0;
    for (const RankReport& rr : r.per_rank) peak = std::max(peak, rr.peak_buffers);
    std::printf("  %-10s %5d %6d %9.3f %7.3f %10zu %12.3g %6s\n", r.schedule.c_str(), r.ranks, r.stages,
                r.step_seconds.back() * 1e3, r.timeline.bubble_ratio(), peak, r.max_rel_err,
                r.pass() ? "pass" : "FAIL");
    all_pass = all_pass && r.pass();
  }
  if (!options.trace_dir.empty())
    std::printf("timelines written to %s/<schedule>.svg and .json\n", options.trace_dir.c_str());
  return all_pass ? 0 : 1;
}
