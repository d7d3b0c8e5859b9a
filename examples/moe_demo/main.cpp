// dualpipe-moe-demo: a small MoE model (dense layer, router with top-2 over E experts sharded over the ep
// ranks, dispatch and combine all-to-alls) with DualPipe, DualPipeV, 1F1B and ZB1P on a P x E grid, each
// step checked against a sequential run; it measures how much of the all-to-all an FB hides.
// Run with --help for the options; exit status 0 pass, 1 a failed check or step, 2 bad arguments.
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "example_cli.hpp"
#include "moe_run.hpp"
#include "moe_trace.hpp"
#ifdef DUALPIPE_HAS_MPI
#include "moe_mpi.hpp"  // --comm mpi: one grid rank per process
#endif

using namespace dualpipe;
using namespace dualpipe::moe_demo;
using dualpipe::examples::bad_argument;
using dualpipe::examples::parse_integer;
using dualpipe::examples::parse_real;

namespace {

struct Options {
  std::vector<ScheduleKind> schedules;
  MoeConfig base;
  std::string trace_dir;
  bool help = false;
};

std::string usage() {
  return "usage: dualpipe-moe-demo [options]\n"
         "Runs a small MoE model in double precision (per layer: a dense layer, a router with softmax gates and top-2\n"
         "over E x X experts, the experts sharded over the ep ranks, dispatch and combine all-to-alls) with each\n"
         "schedule on a P x E grid (pp x ep), and checks every chunk's loss and every layer's and expert's gradient\n"
         "against a sequential run of the whole model on one thread (max relative error <= 1e-12).\n"
         "\n"
         "options:\n"
         "  --schedule NAME        schedule to run; repeatable or a comma list (default: "
         "dualpipe,dualpipev,1f1b,zb1p)\n"
         "  --ranks P              pipeline ranks (default 2); dualpipev has 2P stages, the others P\n"
         "  --ep E                 expert-parallel ranks per pipeline rank (default 2): P x E threads or processes\n"
         "  --chunks C             chunks per step (default 8)\n"
         "  --layers L             MoE layers per stage (default 2)\n"
         "  --hidden H             hidden size (default 16)\n"
         "  --ffn F                each expert's inner size (default 32)\n"
         "  --tokens T             tokens per chunk per ep rank (default 16)\n"
         "  --experts-per-rank X   experts on each ep rank (default 2)\n"
         "  --seed S               seed of the weights and the data (default 233)\n"
         "  --a2a-latency-us L     each all-to-all takes at least L microseconds (default 0) ...\n"
         "  --a2a-gbps G           ... plus its bytes at G gigabits per second (default 0: no bandwidth term)\n"
         "  --overlap on|off       the checked step's FB interleaving (default on); the timing runs both\n"
         "  --repeats N            timing rounds of one step with overlap on and one off; the first is a warm-up\n"
         "                         (default 3)\n"
         "  --trace-dir DIR        draw the checked step with its phases: DIR/<schedule>.svg and .json\n"
         "  --inject-failure R     grid rank R (pp R/E, ep R%E) fails inside the forward dispatch all-to-all of\n"
         "                         chunk 1, layer 0, in the first step (the program exits 1)\n"
         "  --timeout-ms T         bound on every wait (default 60000)\n"
         "  --comm NAME            inproc (P x E threads; the default) or mpi (mpirun -np P*E ... --comm mpi)\n"
         "  -h, --help             this text\n"
         "\n"
         "exit status: 0 all checks passed, 1 a check failed or a step failed, 2 bad arguments.\n"
         "Per schedule it prints the FB time against F + B and against its compute phases alone, the fraction of\n"
         "the FBs' all-to-all time that ran while the other chunk computed, and one line\n"
         "  result: schedule=<s> ranks=<P> ep=<E> chunks=<C> comm=<c> overlap=<on|off> loss_sum=<%.17g>\n"
         "  grad_norm=<%.17g> max_rel_err=<%.3g> a2a_hidden=<0..1> fb_speedup=<x> check=<pass|FAIL>\n"
         "(fb_speedup: mean FB time with overlap off / with overlap on, both measured in this run; both n/a for a\n"
         "schedule without FB ops).\n";
}

Options parse(std::span<const std::string_view> args) {
  Options o;
  MoeConfig& c = o.base;
  examples::OptionReader reader(args);
  while (const auto next = reader.next()) {
    const std::string_view opt = *next;
    if (opt == "-h" || opt == "--help") {
      o.help = true;
      continue;
    }
    auto value = [&] { return reader.value(); };
    if (opt == "--schedule") {
      examples::add_schedules(value(), o.schedules);
    } else if (opt == "--ranks") {
      c.ranks = parse_integer(opt, value(), 1, 64);
    } else if (opt == "--ep") {
      c.spec.ep = parse_integer(opt, value(), 1, 64);
    } else if (opt == "--chunks") {
      c.spec.chunks = parse_integer(opt, value(), 1, 10'000);
    } else if (opt == "--layers") {
      c.spec.layers = parse_integer(opt, value(), 1, 64);
    } else if (opt == "--hidden") {
      c.spec.hidden = parse_integer(opt, value(), 1, 1024);
    } else if (opt == "--ffn") {
      c.spec.ffn = parse_integer(opt, value(), 1, 4096);
    } else if (opt == "--tokens") {
      c.spec.tokens = parse_integer(opt, value(), 1, 100'000);
    } else if (opt == "--experts-per-rank") {
      c.spec.experts_per_rank = parse_integer(opt, value(), 1, 64);
    } else if (opt == "--seed") {
      c.spec.seed = parse_integer<std::uint64_t>(opt, value(), 0, UINT64_MAX);
    } else if (opt == "--a2a-latency-us") {
      const double us = parse_real(opt, value());
      if (us < 0 || us > 1e7) bad_argument("--a2a-latency-us must be in [0, 1e7] (got " + std::to_string(us) + ")");
      c.link.latency = std::chrono::nanoseconds(static_cast<long long>(us * 1e3));
    } else if (opt == "--a2a-gbps") {
      c.link.gbps = parse_real(opt, value());
      if (c.link.gbps < 0) bad_argument("--a2a-gbps must not be negative (got " + std::to_string(c.link.gbps) + ")");
    } else if (opt == "--overlap") {
      const std::string_view v = value();
      if (v != "on" && v != "off") bad_argument("--overlap must be on or off (got '" + std::string(v) + "')");
      c.overlap = v == "on";
    } else if (opt == "--repeats") {
      c.repeats = parse_integer(opt, value(), 2, 10'000);
    } else if (opt == "--trace-dir") {
      o.trace_dir = std::string(value());
      if (o.trace_dir.empty()) bad_argument("--trace-dir needs a directory");
    } else if (opt == "--inject-failure") {
      c.inject_failure = parse_integer(opt, value(), 0, 255);
    } else if (opt == "--timeout-ms") {
      c.timeout = std::chrono::milliseconds(parse_integer<long>(opt, value(), 1, 86'400'000));
    } else if (opt == "--comm") {
      c.comm = std::string(value());
      if (c.comm != "inproc" && c.comm != "mpi")
        bad_argument("unknown --comm '" + c.comm + "' (choose from inproc, mpi)");
    } else {
      bad_argument("unknown option '" + std::string(reader.raw()) + "' (see --help)");
    }
  }
  if (o.schedules.empty())
    for (std::string_view name : {"dualpipe", "dualpipev", "1f1b", "zb1p"})
      o.schedules.push_back(parse_schedule_kind(name));
  return o;
}

void print_report(const MoeConfig& c, const MoeReport& r) {
  const MoeSpec& s = c.spec;
  std::printf(
      "\n== %s: %d pipeline ranks x ep %d, %d stages of %d layers, %d chunks of %d tokens per ep rank, %d "
      "experts (%d per ep rank), top-2, link %.0f us + %s\n",
      r.schedule.c_str(), r.ranks, r.ep, r.stages, s.layers, r.chunks, s.tokens, s.experts(), s.experts_per_rank,
      static_cast<double>(c.link.latency.count()) / 1e3,
      c.link.gbps > 0 ? (std::to_string(c.link.gbps) + " Gb/s").c_str() : "no bandwidth term");
  std::printf("   mean op times (ms): F %.3f, B %.3f, W %.3f\n", r.f_ms, r.b_ms, r.w_ms);
  if (r.has_fb) {
    std::printf(
        "   FB: %.3f ms with overlap on, %.3f ms off (speedup %.2f); F + B = %.3f ms; its compute phases "
        "alone %.3f ms (FB / compute = %.2f)\n",
        r.fb_on_ms, r.fb_off_ms, r.fb_speedup(), r.f_ms + r.b_ms, r.fb_compute_ms,
        r.fb_compute_ms > 0 ? r.fb_on_ms / r.fb_compute_ms : 0.0);
    std::printf("   all-to-all per FB: %.3f ms, of which %.0f%% ran while the other chunk computed\n", r.a2a_ms,
                100 * r.a2a_hidden);
  } else {
    std::printf("   no FB ops in this schedule: every phase runs in order\n");
  }
  for (const std::string& p : r.problems) std::printf("   check failed: %s\n", p.c_str());
  std::printf("%s\n", result_line(r).c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  Options o;
  std::vector<MoeConfig> configs;
  try {
    o = parse(args);
    if (o.help) {
      std::fputs(usage().c_str(), stdout);
      return 0;
    }
    for (ScheduleKind k : o.schedules) {
      MoeConfig c = o.base;
      c.schedule = k;
      validate(c);
      configs.push_back(c);
    }
#ifndef DUALPIPE_HAS_MPI
    if (o.base.comm == "mpi") throw ConfigError("--comm mpi: this dualpipe-moe-demo was built without MPI");
#endif
    if (!o.trace_dir.empty()) examples::make_trace_dir(o.trace_dir);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "dualpipe-moe-demo: error: %s\n", e.what());
    return 2;
  }
#ifdef DUALPIPE_HAS_MPI
  std::optional<MpiSession> mpi_session;
  if (o.base.comm == "mpi") mpi_session.emplace();
  const bool prints = o.base.comm != "mpi" || mpi_world_rank() == 0;
#else
  const bool prints = true;
#endif
  if (prints)
    std::printf("dualpipe-moe-demo: MoE stages (dense, router top-2, experts, all-to-alls), double, comm=%s\n",
                o.base.comm.c_str());
  bool all_pass = true;
  for (const MoeConfig& c : configs) {
    const std::string name(schedule_name(c.schedule));
    try {
      std::optional<MoeReport> got;
#ifdef DUALPIPE_HAS_MPI
      if (c.comm == "mpi") got = run_mpi(c);
      else got = run_inproc(c);
#else
      got = run_inproc(c);
#endif
      if (!got) continue;
      print_report(c, *got);
      all_pass = all_pass && got->pass();
      if (!o.trace_dir.empty() && !got->checked.empty()) {
        const std::filesystem::path dir(o.trace_dir);
        examples::write_file(dir / (name + ".svg"), render_moe_svg(got->checked, "dualpipe-moe-demo: " + name));
        examples::write_file(dir / (name + ".json"), render_moe_chrome(got->checked));
      }
    } catch (const std::exception& e) {
      // A StepError names the rank, module, chunk, op and phase where the failure started.
      std::fprintf(stderr, "dualpipe-moe-demo: %s: %s\n", name.c_str(), e.what());
      return 1;
    }
  }
  return all_pass ? 0 : 1;
}
