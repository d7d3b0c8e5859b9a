// dualpipe-cuda-mlp: trains an MLP (stages Linear -> GELU -> Linear, cuBLAS GEMMs, fp32 or bf16) with
// DualPipe, DualPipeV, 1F1B and ZB1P on GPUs, and checks every step against a sequential run on the GPU.
//
//   dualpipe-cuda-mlp [--comm local|nccl] [--schedule all|dualpipe|dualpipev|1f1b|zb1p[,...]] [--ranks P]
//                     [--chunks C] [--hidden H] [--rows R] [--steps S] [--dtype fp32|bf16] [--hook]
//                     [--lr X] [--seed N] [--timeout-ms T] [--devices N] [--nccl-id-file PATH]
//
// --comm local (default): every rank is a thread of this process (CudaLocalCommunicator), on one GPU (or
//   round-robin on --devices N GPUs). The same P-stage model for every schedule: DualPipe, 1F1B and ZB1P on
//   P ranks, DualPipeV on P/2 ranks (two stages each), as the CPU demo does.
// --comm nccl: one process per GPU (NcclCommunicator), e.g. `mpirun -np 4 dualpipe-cuda-mlp --comm nccl`.
//   Every schedule runs on all the processes (DualPipeV then has 2P stages). The NCCL id comes from
//   DUALPIPE_NCCL_ID (hex) with DUALPIPE_RANK/WORLD_SIZE or the launcher's variables, or from
//   --nccl-id-file (rank 0 writes it), or from MPI when the program was built with MPI.
// --hook: stages with the overlapped forward_backward hook (each FB's halves split into row blocks and
//   interleaved on the two compute streams) instead of the device's default two-stream FB.
//
// Output per schedule: a header, the per-step loss sums and step times, and
//   result: schedule=<name> ranks=<P> chunks=<C> comm=<name> loss_sum=<%.17g> grad_norm=<%.17g> max_rel_err=<%.3g> check=<pass|FAIL>
// Checks: chunk losses, each stage's summed gradient (W1, W2 separately) every step, final parameters;
// normwise max relative error <= 1e-5 (fp32) or 2e-2 (bf16).
// Exit status: 0 pass; 1 a failed check or step; 2 bad arguments; 77 no CUDA device ("no CUDA device" on stderr).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/cuda.hpp"
#include "dualpipe/dualpipe.hpp"
#include "mlp_kernels.hpp"
#include "mlp_stage.hpp"
#include "run.hpp"
#include "sequential.hpp"

#ifdef DUALPIPE_CUDA_MLP_NCCL
#include "dualpipe/nccl.hpp"
#endif
#ifdef DUALPIPE_CUDA_MLP_MPI
#include "dualpipe/nccl/mpi_bootstrap.hpp"
#endif

using namespace dualpipe;
using namespace mlp;

namespace {

struct Options {
  std::string comm = "local";
  std::vector<ScheduleKind> schedules{ScheduleKind::dualpipe, ScheduleKind::dualpipev, ScheduleKind::one_f_one_b,
                                      ScheduleKind::zb1p};
  int ranks = 4;
  int chunks = 8;
  int steps = 2;
  int devices = 1;
  bool hook = false;
  float lr = 0.05f;
  std::chrono::milliseconds timeout{60'000};
  std::string id_file;
  ModelConfig model;
};

[[noreturn]] void usage_error(const std::string& what) { throw ConfigError(what); }

int to_int(std::string_view flag, std::string_view v, int lo, int hi) {
  int x = 0;
  std::size_t used = 0;
  try {
    x = std::stoi(std::string(v), &used);
  } catch (...) {
    used = 0;
  }
  if (used != v.size() || x < lo || x > hi)
    usage_error(std::string(flag) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                "] (got '" + std::string(v) + "')");
  return x;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) usage_error(std::string(a) + " needs a value");
      return argv[++i];
    };
    if (a == "--comm") {
      o.comm = std::string(value());
      if (o.comm != "local" && o.comm != "nccl") usage_error("--comm must be local or nccl (got '" + o.comm + "')");
    } else if (a == "--schedule") {
      const std::string v(value());
      o.schedules.clear();
      if (v == "all") {
        o.schedules = {ScheduleKind::dualpipe, ScheduleKind::dualpipev, ScheduleKind::one_f_one_b, ScheduleKind::zb1p};
      } else {
        std::size_t at = 0;
        while (at <= v.size()) {
          const std::size_t comma = std::min(v.find(',', at), v.size());
          o.schedules.push_back(parse_schedule_kind(v.substr(at, comma - at)));
          at = comma + 1;
        }
      }
    } else if (a == "--ranks") {
      o.ranks = to_int(a, value(), 1, 64);
    } else if (a == "--chunks") {
      o.chunks = to_int(a, value(), 1, 4096);
    } else if (a == "--hidden") {
      o.model.hidden = to_int(a, value(), 8, 8192);
    } else if (a == "--rows") {
      o.model.rows = to_int(a, value(), 1, 1 << 16);
    } else if (a == "--steps") {
      o.steps = to_int(a, value(), 1, 1000);
    } else if (a == "--devices") {
      o.devices = to_int(a, value(), 1, 64);
    } else if (a == "--dtype") {
      const std::string_view v = value();
      if (v == "fp32") o.model.dtype = DType::f32;
      else if (v == "bf16") o.model.dtype = DType::bf16;
      else usage_error("--dtype must be fp32 or bf16 (got '" + std::string(v) + "')");
    } else if (a == "--hook") {
      o.hook = true;
    } else if (a == "--lr") {
      o.lr = std::stof(std::string(value()));
    } else if (a == "--seed") {
      o.model.seed = static_cast<std::uint64_t>(to_int(a, value(), 0, 1 << 30));
    } else if (a == "--timeout-ms") {
      o.timeout = std::chrono::milliseconds(to_int(a, value(), 1, 3'600'000));
    } else if (a == "--nccl-id-file") {
      o.id_file = std::string(value());
    } else if (a == "--help" || a == "-h") {
      std::puts(
          "usage: dualpipe-cuda-mlp [--comm local|nccl] [--schedule all|dualpipe|dualpipev|1f1b|zb1p[,...]]\n"
          "       [--ranks P] [--chunks C] [--hidden H] [--rows R] [--steps S] [--dtype fp32|bf16] [--hook]\n"
          "       [--lr X] [--seed N] [--timeout-ms T] [--devices N] [--nccl-id-file PATH]");
      std::exit(0);
    } else {
      usage_error("unknown argument '" + std::string(a) + "' (see --help)");
    }
  }
  return o;
}

RunConfig run_config(const Options& o, int ranks, const char* comm) {
  RunConfig rc;
  rc.model = o.model;
  rc.ranks = ranks;
  rc.chunks = o.chunks;
  rc.steps = o.steps;
  rc.lr = o.lr;
  rc.timeout = o.timeout;
  rc.tolerance = o.model.dtype == DType::f32 ? 1e-5 : 2e-2;
  rc.comm = comm;
  return rc;
}

void print(const Report& r, const Options& o) {
  std::printf("\n== %s: %d ranks, %d stages, %d chunks of %d rows, hidden %d, %s, %d steps%s\n", r.schedule.c_str(),
              r.ranks, r.stages, r.chunks, o.model.rows, o.model.hidden, dtype_name(o.model.dtype), r.steps,
              o.hook ? ", forward_backward hook" : "");
  std::printf("   step time, slowest rank (ms):");
  for (double ms : r.step_ms) std::printf(" %.3f", ms);
  std::printf("\n");
  if (r.bubble >= 0)
    std::printf("   measured bubble ratio, last step (GPU time): %.3f (simulated for its op times: %.3f)\n", r.bubble,
                r.simulated_bubble);
  for (const std::string& p : r.problems) std::printf("   check failed: %s\n", p.c_str());
  std::printf("%s\n", result_line(r).c_str());
  std::fflush(stdout);
}

/// All ranks as threads of this process, on CudaLocalCommunicator.
template <class Schedule>
Report run_local(const Options& o) {
  const int ranks =
      Schedule::modules_per_rank == 2 && std::string_view(Schedule::name) == "dualpipev" ? o.ranks / 2 : o.ranks;
  if (ranks < 1)
    throw ConfigError(std::string(Schedule::name) + ": --ranks " + std::to_string(o.ranks) + " gives no rank");
  RunConfig rc = run_config(o, ranks, "cuda-local");
  const Layout layout = make_layout<Schedule>(ranks, o.chunks);
  if (o.devices > cuda_device_count())
    throw ConfigError("--devices " + std::to_string(o.devices) + ": this machine has " +
                      std::to_string(cuda_device_count()) + " CUDA devices");
  // The batch on every device a rank sits on (a stage reads its chunk's labels in a kernel).
  std::vector<std::unique_ptr<Batches>> batches;
  for (int d = 0; d < o.devices; ++d) {
    DeviceGuard on(d);
    batches.push_back(std::make_unique<Batches>(o.model, o.chunks, o.steps));
  }
  const SequentialRun seq = run_sequential(o.model, layout.stages, o.chunks, o.steps, o.lr, *batches[0]);
  std::vector<int> devices(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) devices[static_cast<std::size_t>(r)] = r % o.devices;
  CudaLocalWorld world(devices);
  Event epoch(Event::timing);
  epoch.record(StreamRef());
  epoch.synchronize();
  rc.gpu_timeline = o.devices == 1;  // one device: every rank's spans on one clock
  rc.epoch = &epoch;
  std::vector<std::vector<double>> all(static_cast<std::size_t>(ranks));
  std::vector<StepResult> last(static_cast<std::size_t>(ranks));
  run_ranks(ranks, [&](int r) {
    const int d = devices[static_cast<std::size_t>(r)];
    DUALPIPE_CUDA_CHECK(cudaSetDevice(d));
    auto& comm = world.communicator(r);
    const Batches& b = *batches[static_cast<std::size_t>(d)];
    StepResult* l = &last[static_cast<std::size_t>(r)];
    auto& out = all[static_cast<std::size_t>(r)];
    if (o.devices == 1)
      out = o.hook ? run_rank<Schedule, MlpHookStage>(comm, rc, layout, seq, b, l)
                   : run_rank<Schedule, MlpStage>(comm, rc, layout, seq, b, l);
    else  // peers' copies read the chunk buffers: cudaMalloc memory (a default memory pool is not shared)
      out = o.hook ? run_rank<Schedule, MlpHookStage, CudaLocalCommunicator, BasicCudaDevice<SyncAllocator>>(
                         comm, rc, layout, seq, b, l)
                   : run_rank<Schedule, MlpStage, CudaLocalCommunicator, BasicCudaDevice<SyncAllocator>>(
                         comm, rc, layout, seq, b, l);
  });
  Report rep = build_report(rc, std::string(Schedule::name), layout, seq, all);
  if (rc.gpu_timeline) {
    const Timeline measured = merge_timelines(rep.schedule, o.chunks, Mode::train, last);
    const ProfileReport p = profile_step(measured, make_trace<Schedule>(ranks, o.chunks));
    rep.bubble = p.measured_bubble;
    rep.simulated_bubble = p.simulated_bubble;
  }
  return rep;
}

#ifdef DUALPIPE_CUDA_MLP_NCCL
/// Rank 0 gets every rank's summary (all the same size), through the communicator (device memory).
std::vector<std::vector<double>> gather(NcclCommunicator& comm, const std::vector<double>& mine,
                                        std::chrono::milliseconds timeout) {
  const std::size_t bytes = mine.size() * sizeof(double);
  const MessageTag tag{0, 200000, Payload::activation};
  const int P = comm.size();
  DeviceBuffer<SyncAllocator> d(bytes * static_cast<std::size_t>(P), StreamRef());
  std::vector<std::vector<double>> all;
  if (comm.rank() != 0) {
    // On the communication stream, so the send is ordered after it (a cudaMemcpy from pageable memory may
    // return before its copy landed, and the legacy stream does not order with non-blocking ones).
    DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(d.data(), mine.data(), bytes, cudaMemcpyHostToDevice, comm.stream()));
    comm.post_send(0, tag, ConstBytes(static_cast<const std::byte*>(d.data()), bytes));
    comm.commit().wait(timeout);
    comm.synchronize(timeout);
    return all;
  }
  for (int r = 1; r < P; ++r)
    comm.post_recv(r, tag,
                   MutableBytes(static_cast<std::byte*>(d.data()) + static_cast<std::size_t>(r) * bytes, bytes));
  if (P > 1) {
    comm.commit().wait(timeout);
    comm.synchronize(timeout);
  }
  all.push_back(mine);
  for (int r = 1; r < P; ++r) {
    std::vector<double> v(mine.size());
    DUALPIPE_CUDA_CHECK(cudaMemcpy(v.data(), static_cast<std::byte*>(d.data()) + static_cast<std::size_t>(r) * bytes,
                                   bytes, cudaMemcpyDeviceToHost));
    all.push_back(std::move(v));
  }
  return all;
}

/// One rank per process, on NcclCommunicator; the report on rank 0.
template <class Schedule>
std::optional<Report> run_nccl(NcclCommunicator& comm, const Options& o) {
  const int ranks = comm.size();
  const RunConfig rc = run_config(o, ranks, "nccl");
  const Layout layout = make_layout<Schedule>(ranks, o.chunks);
  const Batches batches(o.model, o.chunks, o.steps);
  const SequentialRun seq = run_sequential(o.model, layout.stages, o.chunks, o.steps, o.lr, batches);
  const std::vector<double> mine = o.hook ? run_rank<Schedule, MlpHookStage>(comm, rc, layout, seq, batches)
                                          : run_rank<Schedule, MlpStage>(comm, rc, layout, seq, batches);
  const auto all = gather(comm, mine, o.timeout);
  if (comm.rank() != 0) return std::nullopt;
  return build_report(rc, std::string(Schedule::name), layout, seq, all);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dualpipe-cuda-mlp: error: %s\n", e.what());
    return 2;
  }
  // Several ranks on one GPU use three streams each: more hardware queues than CUDA's default 8, so that
  // their streams do not wait for each other. Before the first CUDA call; a value set by the user wins.
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  if (!cuda_device_available()) {
    std::fprintf(stderr, "no CUDA device (%s)\n", cuda_unavailable_reason().c_str());
    return 77;
  }
  bool all_pass = true;
  try {
    if (o.comm == "local") {
      for (ScheduleKind k : o.schedules) {
        const Report r = visit_schedule(k, [&](auto s) { return run_local<decltype(s)>(o); });
        print(r, o);
        all_pass = all_pass && r.pass();
      }
    } else {
#ifdef DUALPIPE_CUDA_MLP_NCCL
      LaunchInfo who;
      ncclUniqueId id{};
      bool mpi = false;
      if (std::getenv("DUALPIPE_NCCL_ID")) {
        who = launch_info_from_env();
        id = unique_id_from_env();
      } else if (!o.id_file.empty()) {
        who = launch_info_from_env();
        id = unique_id_via_file(o.id_file, who.rank, o.timeout);
      } else {
#ifdef DUALPIPE_CUDA_MLP_MPI
        MPI_Init(&argc, &argv);
        mpi = true;
        who = mpi_launch_info(MPI_COMM_WORLD);
        id = unique_id_via_mpi(MPI_COMM_WORLD);
#else
        throw ConfigError("--comm nccl needs DUALPIPE_NCCL_ID (hex) or --nccl-id-file PATH (this build has no MPI)");
#endif
      }
      {
        NcclCommunicator comm(who.rank, who.size, id, who.local_rank % cuda_device_count());
        DUALPIPE_CUDA_CHECK(cudaSetDevice(comm.device()));
        for (ScheduleKind k : o.schedules) {
          const std::optional<Report> r = visit_schedule(k, [&](auto s) { return run_nccl<decltype(s)>(comm, o); });
          if (r) {
            print(*r, o);
            all_pass = all_pass && r->pass();
          }
        }
      }
#ifdef DUALPIPE_CUDA_MLP_MPI
      if (mpi) MPI_Finalize();
#else
      (void)mpi;
#endif
#else
      throw ConfigError("--comm nccl: this build has no NCCL");
#endif
    }
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "dualpipe-cuda-mlp: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    // A StepError names the rank, module, chunk and op where the failure started.
    std::fprintf(stderr, "dualpipe-cuda-mlp: %s\n", e.what());
    return 1;
  }
  return all_pass ? 0 : 1;
}
