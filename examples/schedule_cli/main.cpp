// dualpipe-schedule: print, validate, simulate and draw the schedules of the library.
//
//   dualpipe-schedule --schedule dualpipe|dualpipev|1f1b|gpipe|zb1p --ranks P --chunks C [--forward-only]
//                     [--format trace|grid|svg|chrome|summary] [--model rendezvous|async]
//                     [--costs F=1,B=2,W=1,FB=3,latency=0] [--stage-costs 'S:KEY=V,...;S:...'] [--output FILE]
//   dualpipe-schedule --compare --ranks P --chunks C [--costs ...] [--stage-costs ...] [--model ...]
//
// Bad arguments: exit code 2, one line on stderr, nothing on stdout.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/analysis/render_chrome.hpp"
#include "dualpipe/analysis/render_grid.hpp"
#include "dualpipe/analysis/render_svg.hpp"
#include "dualpipe/analysis/simulator.hpp"
#include "dualpipe/analysis/validator.hpp"
#include "dualpipe/dualpipe.hpp"

namespace {

using namespace dualpipe;

constexpr std::string_view usage_text =
    "usage: dualpipe-schedule --schedule NAME --ranks P --chunks C [--forward-only]\n"
    "                         [--format trace|grid|svg|chrome|summary] [--model rendezvous|async]\n"
    "                         [--costs F=1,B=2,W=1,FB=3,latency=0,bytes=0,bandwidth=0]\n"
    "                         [--stage-costs 'S:KEY=V,...;S:KEY=V,...'] [--output FILE]\n"
    "       dualpipe-schedule --compare --ranks P --chunks C [--costs ...] [--stage-costs ...] [--model ...]\n"
    "\n"
    "Schedules: dualpipe, dualpipev, 1f1b, gpipe, zb1p.\n"
    "  --format trace    the op lists in the trace grammar (the golden files' format; the default)\n"
    "  --format grid     a text grid of the simulated step, time down, ranks across\n"
    "  --format svg      an SVG timeline of the simulated step\n"
    "  --format chrome   Chrome trace JSON of the simulated step (opens in Perfetto)\n"
    "  --format summary  key: value lines: makespan, idle per rank, bubble ratio, peak activations\n"
    "  --compare         every schedule side by side for a model of P stages and C chunks\n"
    "  --stage-costs     stages that cost other than --costs, e.g. '0:B=1.5;7:F=1.2' (stage 0's backward,\n"
    "                    stage 7's forward); the stages not named cost --costs\n"
    "Every schedule is validated (pairing, dependencies, deadlock freedom) before it is printed.\n";

/// A bad command line: reported as one line on stderr with exit code 2.
struct UsageError {
  std::string message;
};

struct Args {
  std::optional<std::string> schedule;
  int ranks = -1;
  int chunks = -1;
  bool forward_only = false;
  bool compare = false;
  std::string format = "trace";
  std::string model = "rendezvous";
  std::string costs;
  std::string stage_costs;
  std::string output;
};

int parse_int(std::string_view flag, std::string_view text) {
  try {
    std::size_t used = 0;
    const int v = std::stoi(std::string(text), &used);
    if (used != text.size()) throw std::invalid_argument("trailing");
    return v;
  } catch (const std::exception&) {
    throw UsageError{std::string(flag) + " needs an integer (got '" + std::string(text) + "')"};
  }
}

// Beyond these a step's op lists would not fit in memory; refuse them instead of dying of bad_alloc.
constexpr int max_ranks = 4096;
constexpr int max_chunks = 1 << 20;
constexpr long long max_rank_chunks = 1LL << 24;  // ranks x chunks: about 14 ops each

Args parse_args(int argc, char** argv) {
  Args a;
  bool have_ranks = false, have_chunks = false;
  std::vector<std::string_view> seen;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--") && arg != "--help") {
      if (std::find(seen.begin(), seen.end(), arg) != seen.end()) throw UsageError{std::string(arg) + " given twice"};
      seen.push_back(arg);
    }
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw UsageError{std::string(arg) + " needs a value"};
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::cout << usage_text;
      std::exit(0);
    } else if (arg == "--schedule") a.schedule = std::string(value());
    else if (arg == "--ranks") {
      a.ranks = parse_int(arg, value());
      have_ranks = true;
    } else if (arg == "--chunks") {
      a.chunks = parse_int(arg, value());
      have_chunks = true;
    } else if (arg == "--forward-only") a.forward_only = true;
    else if (arg == "--compare") a.compare = true;
    else if (arg == "--format") a.format = std::string(value());
    else if (arg == "--model") a.model = std::string(value());
    else if (arg == "--costs") a.costs = std::string(value());
    else if (arg == "--stage-costs") a.stage_costs = std::string(value());
    else if (arg == "--output") a.output = std::string(value());
    else throw UsageError{"unknown argument '" + std::string(arg) + "' (see --help)"};
  }
  if (!have_ranks) throw UsageError{"--ranks P is required"};
  if (!have_chunks) throw UsageError{"--chunks C is required"};
  if (a.compare && a.schedule) throw UsageError{"--compare and --schedule exclude each other"};
  if (a.compare && (a.forward_only || a.format != "trace"))
    throw UsageError{"--compare prints its own table: --format and --forward-only do not apply"};
  if (a.ranks < 1) throw UsageError{"ranks must be at least 1 (got ranks=" + std::to_string(a.ranks) + ")"};
  if (a.chunks < 1) throw UsageError{"chunks must be at least 1 (got chunks=" + std::to_string(a.chunks) + ")"};
  if (a.ranks > max_ranks || a.chunks > max_chunks || static_cast<long long>(a.ranks) * a.chunks > max_rank_chunks)
    throw UsageError{"ranks x chunks too large for one program run (got ranks=" + std::to_string(a.ranks) +
                     ", chunks=" + std::to_string(a.chunks) + "; limits: ranks <= " + std::to_string(max_ranks) +
                     ", chunks <= " + std::to_string(max_chunks) +
                     ", ranks x chunks <= " + std::to_string(max_rank_chunks) + ")"};
  if (!a.compare && !a.schedule) throw UsageError{"--schedule NAME (or --compare) is required"};
  if (a.format != "trace" && a.format != "grid" && a.format != "svg" && a.format != "chrome" && a.format != "summary")
    throw UsageError{"--format must be trace, grid, svg, chrome or summary (got '" + a.format + "')"};
  return a;
}

std::string join(const std::vector<double>& xs) {
  std::ostringstream out;
  for (std::size_t i = 0; i < xs.size(); ++i) out << (i ? " " : "") << xs[i];
  return out.str();
}

std::string join(const std::vector<int>& xs) {
  std::ostringstream out;
  for (std::size_t i = 0; i < xs.size(); ++i) out << (i ? " " : "") << xs[i];
  return out.str();
}

std::string summary_text(const Summary& s) {
  std::ostringstream out;
  out << "schedule: " << s.schedule << "\n"
      << "ranks: " << s.ranks << "\n"
      << "chunks: " << s.chunks << "\n"
      << "makespan: " << s.makespan << "\n"
      << "idle: " << join(s.idle) << "\n"
      << "bubble_ratio: " << s.bubble_ratio << "\n"
      << "peak_activations: " << join(s.peak_activations) << "\n";
  return out.str();
}

/// One row of --compare: a schedule run on as many devices as it needs for `stages` stages.
std::string compare_text(int stages, int chunks, const Costs& costs, const std::string& stage_costs, CommModel model) {
  // Parsed before the rows, so that a bad --stage-costs is an error and not a row that says "not applicable".
  const StageCosts per_stage = parse_stage_costs(stage_costs, costs, stages);
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof line, "%-10s %7s %6s %6s %9s %9s %8s %9s %s\n", "schedule", "devices", "stages", "chunks",
                "makespan", "max_idle", "bubble", "peak_act", "params/device");
  out << "# " << stages << " model stages, " << chunks << " chunks, F=" << costs.forward << " B=" << costs.backward
      << " W=" << costs.weight << " F&B=" << costs.forward_backward << " latency=" << costs.latency
      << (stage_costs.empty() ? "" : ", stages " + stage_costs) << ", " << to_string(model) << " model\n"
      << line;
  for (ScheduleKind kind : all_schedule_kinds) {
    const std::string name(schedule_name(kind));
    // DualPipeV puts two stages on each device; every other schedule one stage per device.
    const bool v_shape = kind == ScheduleKind::dualpipev;
    const int devices = v_shape ? stages / 2 : stages;
    try {
      if (v_shape && stages % 2 != 0)
        throw ConfigError("dualpipev: needs an even number of stages to compare (got " + std::to_string(stages) + ")");
      const Trace trace = make_trace(kind, devices, chunks, Mode::train);
      check_valid(trace, kind);
      const Timeline timeline = simulate(trace, kind, per_stage, model);
      const Summary s = summarize(timeline, trace);
      double worst = 0;
      for (double x : s.idle) worst = std::max(worst, x);
      int peak = 0;
      for (int x : s.peak_activations) peak = std::max(peak, x);
      std::snprintf(line, sizeof line, "%-10s %7d %6d %6d %9.6g %9.6g %8.4f %9d %s\n", name.c_str(), devices, stages,
                    chunks, s.makespan, worst, s.bubble_ratio, peak, modules_per_rank(kind) == 2 ? "2x" : "1x");
      out << line;
    } catch (const ConfigError& e) {
      out << name << ": not applicable: " << e.what() << "\n";
    }
  }
  return out.str();
}

int run(const Args& a) {
  const Costs costs = a.costs.empty() ? Costs{} : parse_costs(a.costs);
  const CommModel model = parse_comm_model(a.model);
  std::string text;
  if (a.compare) {
    text = compare_text(a.ranks, a.chunks, costs, a.stage_costs, model);
  } else {
    const ScheduleKind kind = parse_schedule_kind(*a.schedule);
    const Trace trace = make_trace(kind, a.ranks, a.chunks, a.forward_only ? Mode::forward : Mode::train);
    check_valid(trace, kind);
    // Parsed for every format, so that a bad --stage-costs is refused even where nothing is simulated.
    const StageCosts per_stage =
        parse_stage_costs(a.stage_costs, costs, placement_of(kind, a.ranks, a.chunks)(0, 0).num_stages);
    if (a.format == "trace") {
      text = format_trace(trace);
    } else {
      const Timeline timeline = simulate(trace, kind, per_stage, model);
      if (a.format == "grid") text = render_grid(timeline);
      else if (a.format == "svg") text = render_svg(timeline);
      else if (a.format == "chrome") text = render_chrome_trace(timeline);
      else text = summary_text(summarize(timeline, trace));
    }
  }
  if (a.output.empty()) {
    std::cout << text;
  } else {
    std::ofstream f(a.output, std::ios::binary);
    if (!f) throw UsageError{"cannot write --output '" + a.output + "'"};
    f << text;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "dualpipe-schedule: " << e.message << "\n";
    return 2;
  } catch (const dualpipe::ConfigError& e) {
    std::cerr << "dualpipe-schedule: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dualpipe-schedule: error: " << e.what() << "\n";
    return 1;
  }
}
