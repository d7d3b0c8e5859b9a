// cpu_demo/options.hpp: the command line of dualpipe-cpu-demo, and the runs it asks for.
//
// The same model for every schedule: --ranks P gives DualPipe, 1F1B, ZB1P (and GPipe) P ranks and a model of
// P stages; DualPipeV runs that same P-stage model on P/2 ranks (its 2 modules per rank hold 2 stages), as
// in the paper's comparison (PP/2 devices). --v-ranks Q runs DualPipeV on Q ranks instead, with 2Q stages.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "demo.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "example_cli.hpp"

namespace dualpipe::cpu_demo {

/// Everything the command line says.
struct ProgramOptions {
  std::vector<ScheduleKind> schedules;  ///< In the order given; empty: the default four.
  int ranks = 4;
  std::optional<int> v_ranks;  ///< DualPipeV's ranks; default ranks / 2 (same model depth).
  int chunks = 8;
  int dp = 1;          ///< Data-parallel replicas D.
  int accumulate = 1;  ///< Pipeline steps per update K.
  int steps = 3;
  int hidden = 64;
  int rows = 32;
  std::uint64_t seed = 233;
  double lr = 0.1;
  std::string trace_dir;  ///< Empty: no trace files.
  int inject_failure = -1;
  long timeout_ms = 60'000;
  std::string comm = "inproc";
  bool variable_lengths = false;  ///< Each chunk its own rows in [1, R], two tensors per boundary.
  bool help = false;
};

/// The schedules run when none is named.
inline constexpr std::string_view default_schedules[] = {"dualpipe", "dualpipev", "1f1b", "zb1p"};

/// The --help text.
[[nodiscard]] inline std::string usage() {
  return "usage: dualpipe-cpu-demo [options]\n"
         "Trains a small MLP (stages Linear(h,4h) -> GELU(erf) -> Linear(4h,h), double precision) for a few SGD steps\n"
         "on P threads with each schedule, and checks every step's chunk losses and summed stage gradients against\n"
         "a sequential run of the same model (max relative error <= 1e-12).\n"
         "\n"
         "options:\n"
         "  --schedule NAME      schedule to run; repeatable or a comma list (default: dualpipe,dualpipev,1f1b,zb1p;\n"
         "                       choose from " +
         schedule_names() +
         ")\n"
         "  --ranks P            ranks of dualpipe/1f1b/zb1p/gpipe, and the model's stages (default 4)\n"
         "  --v-ranks Q          ranks of dualpipev (default P/2: the same P-stage model; with Q, 2Q stages)\n"
         "  --chunks C           batch chunks (micro-batches) per pipeline step (default 8)\n"
         "  --dp D               data-parallel replicas: D pipelines; replica d trains chunks [d*C, (d+1)*C) of a\n"
         "                       D*C-chunk batch, gradients reduced over copies and replicas (default 1)\n"
         "  --accumulate K       pipeline steps whose gradients add up before each update (default 1); an update's\n"
         "                       batch is K*D*C chunks\n"
         "  --steps N            training steps (updates; default 3)\n"
         "  --hidden H           hidden size h (default 64)\n"
         "  --batch-rows R       rows per chunk (default 32)\n"
         "  --variable-lengths   each chunk gets its own row count in [1, R] (seeded), and the stages pass two\n"
         "                       tensors (the hidden state, and an auxiliary column the next stage uses)\n"
         "  --seed S             seed of the weights and the data (default 233)\n"
         "  --lr X               SGD learning rate (default 0.1)\n"
         "  --trace-dir DIR      write the last step's measured timeline as DIR/<schedule>.svg and .json\n"
         "  --inject-failure R   rank R's stage throws mid-way through the first step (the program exits 1); with\n"
         "                       --dp, R is a grid rank in [0, P*D): pipeline rank R%P of replica R/P\n"
         "  --timeout-ms T       bound on every wait of a step (default 60000)\n"
         "  --comm NAME          communicator: inproc (one thread per rank, P*D threads; the default), or mpi (one\n"
         "                       rank per process: mpirun -np P*D dualpipe-cpu-demo --comm mpi ...; rank 0 prints)\n"
         "  -h, --help           this text\n"
         "\n"
         "exit status: 0 all checks passed, 1 a check failed or a step failed, 2 bad arguments.\n"
         "Per schedule it prints a table and one line:\n"
         "  result: schedule=<name> ranks=<P> chunks=<C> dp=<D> accumulate=<K> comm=<name> loss_sum=<%.17g> "
         "grad_norm=<%.17g> "
         "max_rel_err=<%.3g> check=<pass|FAIL>\n";
}

namespace detail {
using examples::bad_argument;
using examples::parse_integer;
using examples::parse_real;
}  // namespace detail

/// Parses the arguments after the program name. Throws ConfigError naming the option and the value.
[[nodiscard]] inline ProgramOptions parse_options(std::span<const std::string_view> args) {
  ProgramOptions o;
  examples::OptionReader reader(args);
  while (const auto next = reader.next()) {
    const std::string_view opt = *next;
    if (opt == "-h" || opt == "--help") {
      o.help = true;
      continue;
    }
    if (opt == "--variable-lengths") {
      o.variable_lengths = true;
      continue;
    }
    auto value = [&] { return reader.value(); };
    if (opt == "--schedule") {
      examples::add_schedules(value(), o.schedules);
    } else if (opt == "--ranks") {
      o.ranks = detail::parse_integer(opt, value(), 1, 256);
    } else if (opt == "--v-ranks") {
      o.v_ranks = detail::parse_integer(opt, value(), 1, 256);
    } else if (opt == "--chunks") {
      o.chunks = detail::parse_integer(opt, value(), 1, 100'000);
    } else if (opt == "--dp") {
      o.dp = detail::parse_integer(opt, value(), 1, 256);
    } else if (opt == "--accumulate") {
      o.accumulate = detail::parse_integer(opt, value(), 1, 10'000);
    } else if (opt == "--steps") {
      o.steps = detail::parse_integer(opt, value(), 1, 1'000'000);
    } else if (opt == "--hidden") {
      o.hidden = detail::parse_integer(opt, value(), 1, 4096);
    } else if (opt == "--batch-rows") {
      o.rows = detail::parse_integer(opt, value(), 1, 1'000'000);
    } else if (opt == "--seed") {
      o.seed = detail::parse_integer<std::uint64_t>(opt, value(), 0, UINT64_MAX);
    } else if (opt == "--lr") {
      o.lr = detail::parse_real(opt, value());
    } else if (opt == "--trace-dir") {
      o.trace_dir = std::string(value());
      if (o.trace_dir.empty()) detail::bad_argument("--trace-dir needs a directory");
    } else if (opt == "--inject-failure") {
      o.inject_failure = detail::parse_integer(opt, value(), 0, 255);
    } else if (opt == "--timeout-ms") {
      o.timeout_ms = detail::parse_integer<long>(opt, value(), 1, 86'400'000);
    } else if (opt == "--comm") {
      o.comm = std::string(value());
      if (o.comm != "inproc" && o.comm != "mpi")
        detail::bad_argument("unknown --comm '" + o.comm + "' (choose from inproc, mpi)");
    } else {
      detail::bad_argument("unknown option '" + std::string(reader.raw()) + "' (see --help)");
    }
  }
  if (o.schedules.empty())
    for (std::string_view name : default_schedules) o.schedules.push_back(parse_schedule_kind(name));
  return o;
}

/// The run of each schedule the options ask for, validated (ConfigError before anything runs).
[[nodiscard]] inline std::vector<DemoConfig> make_configs(const ProgramOptions& o) {
  std::vector<DemoConfig> out;
  for (ScheduleKind k : o.schedules) {
    DemoConfig c;
    c.schedule = k;
    c.ranks = o.ranks;
    if (k == ScheduleKind::dualpipev) {
      if (o.v_ranks) {
        c.ranks = *o.v_ranks;
      } else {
        if (o.ranks % 2 != 0)
          throw ConfigError("dualpipev runs the same P-stage model on P/2 ranks, so --ranks must be even (got ranks=" +
                            std::to_string(o.ranks) + "); or give dualpipev's ranks with --v-ranks");
        c.ranks = o.ranks / 2;
      }
    }
    c.model.hidden = o.hidden;
    c.model.rows = o.rows;
    c.model.chunks = o.chunks;
    c.dp = o.dp;
    c.accumulate = o.accumulate;
    c.model.steps = o.steps;
    c.model.seed = o.seed;
    c.model.lr = o.lr;
    c.model.variable_rows = o.variable_lengths;
    c.timeout = std::chrono::milliseconds(o.timeout_ms);
    c.inject_failure = o.inject_failure;
    c.comm = o.comm;
    validate(c);
    out.push_back(c);
  }
  return out;
}

}  // namespace dualpipe::cpu_demo
