#!/usr/bin/env python3
"""The peer benchmark: the same model, weights and data under PyTorch's torch.distributed.pipelining and
under dualpipe's TorchStage, one table. Started by bench/peers/run.sh (which also installs PyTorch); see
docs/benchmarks-peers.md.

The model is the reference example's: S stages of Linear(h, 4h) -> GELU -> Linear(4h, h) without bias,
float32, mean squared error, C chunks (micro-batches) of micro_batch x seq_len rows. `dualpipe-peers data`
writes the weights (libtorch's default Linear initialisation from a seed) and the batch as raw float32 files;
both systems read them. One thread per rank everywhere (torch.set_num_threads(1); ours also the BLAS's own).

Rows, per P:
  PyTorch  Schedule1F1B (P stages), ScheduleDualPipeV, ScheduleZBVZeroBubble, ScheduleInterleavedZeroBubble
           (2P stages): one process per rank, gloo over loopback.
  dualpipe DualPipe, 1F1B, ZB1P (P stages), DualPipeV (2P stages): rank threads (InProcessWorld) and
           MPI processes (mpirun -np P), modules built from DeferredLinear.
Columns: step time (median of the timed steps, each step's time being its slowest rank's), the system's
own sequential time for the same model (one process, chunk after chunk), efficiency = sequential / (P x
step), our simulator's bound (1 - bubble ratio, from the measured F/B/W costs of the first, a middle and the
last stage; for PyTorch's rows, that of our schedule of the same name where there is one) and the same bound
with every stage costing a middle one's (even bound), and the first step's total loss with its
largest per-chunk relative difference from our sequential run of the same model.

Exit status: 0, 1 when a loss cross-check fails (the table is written anyway), 2 for bad arguments,
3 when the machine is busy (load average above the core count; --force times anyway), 77 when PyTorch is
missing (the CTest test's skip code).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SKIP = 77
TORCH_SCHEDULES = {  # name -> (class name, stages per rank, placement style)
    "1F1B": ("Schedule1F1B", 1, "loop"),
    "DualPipeV": ("ScheduleDualPipeV", 2, "v"),
    "ZBVZeroBubble": ("ScheduleZBVZeroBubble", 2, "v"),
    "InterleavedZeroBubble": ("ScheduleInterleavedZeroBubble", 2, "loop"),
}
OUR_SCHEDULES = {"dualpipe": 1, "dualpipev": 2, "1f1b": 1, "zb1p": 1}  # name -> stages per rank (S = k P)
TORCH_TO_OURS = {"1F1B": "1f1b", "DualPipeV": "dualpipev"}
LOSS_TOLERANCE = 1e-4  # float32, different BLAS libraries and summation orders


# glibc malloc settings for --malloc keep: blocks up to 32 MiB come from the heap (not a fresh mmap each time)
# and free memory at the heap's top stays mapped up to 1 GiB, instead of being returned to the kernel and
# page-faulted back (and zeroed) by the next chunk's tensors.
MALLOC_KEEP = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def merge_rounds(runs: list[dict]) -> list[dict]:
    """One row per (P, system, schedule, comm) from its runs in every round: medians over the rounds, the
    efficiency being each round's own (its sequential baseline timed in the same round)."""
    merged: dict[tuple, dict] = {}
    for run in runs:
        key = (run["P"], run["system"], run["schedule"], run["comm"])
        row = merged.setdefault(key, dict(run, runs=[]))
        row["runs"].append({k: run[k] for k in ("round", "step_ms", "sequential_ms", "efficiency", "wait_ms",
                                                "cpu_ms", "progress_cpu_ms") if k in run})
        row["loss_rel_diff"] = max(row["loss_rel_diff"], run["loss_rel_diff"])
    for row in merged.values():
        for k in ("step_ms", "sequential_ms", "efficiency", "wait_ms", "cpu_ms", "progress_cpu_ms"):
            if k not in row["runs"][0]:
                continue
            values = [r[k] for r in row["runs"]]
            row[k] = statistics.median(values)
            row[k + "_range"] = (min(values), max(values))
    return list(merged.values())


def read_meta(data_dir: str) -> dict[str, int]:
    with open(os.path.join(data_dir, "meta.txt")) as f:
        return {k: int(v) for k, v in (item.split("=") for item in f.read().split())}


# ---------------------------------------------------------------------------------------------------------
# PyTorch's side (imported only here, so that the driver runs without PyTorch to say it is missing)
# ---------------------------------------------------------------------------------------------------------


def torch_model(data_dir: str, meta: dict[str, int], stage_indices: list[int]):
    import torch

    h = meta["hidden"]

    class Stage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = torch.nn.Linear(h, 4 * h, bias=False)
            self.l2 = torch.nn.Linear(4 * h, h, bias=False)

        def forward(self, x):
            return self.l2(torch.nn.functional.gelu(self.l1(x)))

    def load(path: str, shape: tuple[int, ...]):
        n = 1
        for d in shape:
            n *= d
        if os.path.getsize(path) != 4 * n:
            raise SystemExit(f"{path}: expected {4 * n} bytes of float32")
        return torch.from_file(path, shared=False, size=n, dtype=torch.float32).view(shape)

    modules = []
    with torch.no_grad():
        for s in stage_indices:
            m = Stage()
            m.l1.weight.copy_(load(os.path.join(data_dir, f"stage{s}_l1.bin"), (4 * h, h)))
            m.l2.weight.copy_(load(os.path.join(data_dir, f"stage{s}_l2.bin"), (h, 4 * h)))
            modules.append(m)
    batch = (meta["chunks"] * meta["micro_batch"], meta["seq_len"], h)
    x = load(os.path.join(data_dir, "x.bin"), batch)
    labels = load(os.path.join(data_dir, "labels.bin"), batch)
    return modules, x, labels


def torch_sequential_step(model, xs, ls, losses: list | None = None) -> float:
    """One step of the model without a pipeline, chunk after chunk; returns its seconds."""
    import torch

    for m in model:
        m.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for x, label in zip(xs, ls):
        y = x
        for m in model:
            y = m(y)
        loss = torch.nn.functional.mse_loss(y, label)
        loss.backward()
        if losses is not None:
            losses.append(loss.item())
    return time.perf_counter() - t0


def torch_sequential(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    meta = read_meta(a.data)
    model, x, labels = torch_model(a.data, meta, list(range(a.stages)))
    xs, ls = x.chunk(meta["chunks"]), labels.chunk(meta["chunks"])
    times, first = [], []
    for step in range(a.warmup + a.steps):
        elapsed = torch_sequential_step(model, xs, ls, first if step == 0 else None)
        if step >= a.warmup:
            times.append(elapsed)
    print("result: " + json.dumps({"command": "sequential", "stages": a.stages, "step_ms": 1e3 * statistics.median(times),
                                   "step_ms_all": [1e3 * t for t in times], "losses": first,
                                   "torch": torch.__version__, "blas": torch_blas()}), flush=True)


def torch_blas() -> str:
    import torch

    cfg = torch.__config__.show()
    for key in ("BLAS_INFO=", "LAPACK_INFO="):
        if key in cfg:
            return cfg.split(key, 1)[1].split(",")[0].strip()
    return "unknown"


def torch_worker(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.pipelining as pipelining

    torch.set_num_threads(1)
    rank, ranks = a.rank, a.ranks
    dist.init_process_group("gloo", rank=rank, world_size=ranks, init_method=f"tcp://127.0.0.1:{a.port}")
    class_name, per_rank, style = TORCH_SCHEDULES[a.schedule]
    num_stages = per_rank * ranks
    if per_rank == 1:
        indices = [rank]
    elif style == "v":
        indices = [rank, 2 * ranks - 1 - rank]
    else:
        indices = [rank, rank + ranks]
    meta = read_meta(a.data)
    modules, x, labels = torch_model(a.data, meta, indices)
    stages = [pipelining.PipelineStage(m, i, num_stages, torch.device("cpu"))
              for m, i in zip(modules, indices)]
    cls = getattr(pipelining, class_name)
    # scale_grads=False: gradients summed over chunks, as the reference's (and our) sequential step.
    schedule = cls(stages[0] if per_rank == 1 else stages, n_microbatches=meta["chunks"],
                   loss_fn=torch.nn.functional.mse_loss, scale_grads=False)
    first_stage, last_stage = 0 in indices, num_stages - 1 in indices
    # --paired: rank 0 runs the sequential step right before every pipeline step (the others wait in the barrier).
    sequential = None
    if a.paired and rank == 0:
        seq_model, _, _ = torch_model(a.data, meta, list(range(num_stages)))
        sequential = (seq_model, x.chunk(meta["chunks"]), labels.chunk(meta["chunks"]))
    times, first_losses, paired_times = [], [], []
    for step in range(a.warmup + a.steps):
        if sequential is not None:
            elapsed = torch_sequential_step(*sequential)
            if step >= a.warmup:
                paired_times.append(elapsed)
        for m in modules:
            m.zero_grad(set_to_none=True)
        losses: list = []
        dist.barrier()  # every rank starts the step together
        t0 = time.perf_counter()
        args = (x,) if first_stage else ()
        if last_stage:
            schedule.step(*args, target=labels, losses=losses)
        else:
            schedule.step(*args)
        elapsed = time.perf_counter() - t0
        if step == 0 and last_stage:
            first_losses = [float(v.detach()) for v in losses]
        if step >= a.warmup:
            times.append(elapsed)
    gathered: list = [None] * ranks
    dist.all_gather_object(gathered, {"times": times, "losses": first_losses})
    if rank == 0:
        slowest = [max(g["times"][i] for g in gathered) for i in range(len(times))]
        losses = next(g["losses"] for g in gathered if g["losses"])
        print("result: " + json.dumps({"command": "pipeline", "schedule": a.schedule, "comm": "gloo", "ranks": ranks,
                                       "stages": num_stages, "step_ms": 1e3 * statistics.median(slowest),
                                       "step_ms_all": [1e3 * t for t in slowest], "losses": losses,
                                       "paired_sequential_ms_all": [1e3 * t for t in paired_times],
                                       "torch": torch.__version__, "blas": torch_blas()}), flush=True)
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------


class RunError(Exception):
    pass


def result_of(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """Runs a command; returns the JSON of its `result:` line."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise RunError(f"timed out after {timeout:.0f} s: {shlex.join(cmd)}") from e
    for line in p.stdout.splitlines():
        if line.startswith("result: "):
            if p.returncode != 0:
                break
            return json.loads(line[len("result: "):])
    tail = (p.stderr.strip() or p.stdout.strip()).splitlines()[-12:]
    raise RunError(f"exit {p.returncode}: {shlex.join(cmd)}\n    " + "\n    ".join(tail))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torch_pipeline(a: argparse.Namespace, schedule: str, ranks: int, timeout: float) -> dict:
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"), OMP_NUM_THREADS="1")
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ranks):
            cmd = [sys.executable, os.path.abspath(__file__), "torch-worker", "--data", a.data, "--schedule", schedule,
                   "--ranks", str(ranks), "--rank", str(r), "--port", str(port), "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--paired", "0" if a.unpaired else "1"]
            out = open(os.path.join(tmp, f"{r}.out"), "w+")
            procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env), out))
        deadline = time.monotonic() + timeout
        failed = False
        for p, _ in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                failed = True
            failed = failed or p.returncode != 0
        if failed:
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        texts = []
        for _, out in procs:
            out.seek(0)
            texts.append(out.read())
            out.close()
    for line in texts[0].splitlines():
        if line.startswith("result: ") and not failed:
            return json.loads(line[len("result: "):])
    tail = "\n".join(t.strip() for t in texts).splitlines()[-12:]
    raise RunError(f"PyTorch {schedule} on {ranks} ranks failed:\n    " + "\n    ".join(tail))


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu})"


def load_line() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("torch-worker", "torch-sequential"):
        sub = argparse.ArgumentParser()
        sub.add_argument("command")
        for key in ("--data", "--schedule"):
            sub.add_argument(key)
        for key in ("--ranks", "--rank", "--port", "--steps", "--warmup", "--stages", "--paired"):
            sub.add_argument(key, type=int, default=0)
        a = sub.parse_args()
        (torch_worker if a.command == "torch-worker" else torch_sequential)(a)
        return 0

    ap = argparse.ArgumentParser(description="PyTorch's pipelining against dualpipe's TorchStage, one table.")
    ap.add_argument("--peers-bin", required=True, help="the dualpipe-peers program")
    ap.add_argument("--ranks", default="2,4", help="pipeline sizes P, comma-separated (default 2,4)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--micro-batch", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mpiexec", default="", help="mpirun for our MPI rows (none: no MPI rows)")
    ap.add_argument("--mpiexec-flags", default="", help="flags after 'mpirun -np P'")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every row this many times, round after round (with --unpaired the sequential baselines "
                         "too); a row shows the medians over rounds and the range of its efficiency")
    ap.add_argument("--unpaired", action="store_true",
                    help="take each row's efficiency against the separately timed sequential run, instead of "
                         "against a sequential step run right before each pipeline step (the default)")
    ap.add_argument("--malloc", choices=("keep", "default"), default="keep",
                    help="keep (the default): every process of both systems runs with glibc's malloc keeping freed "
                         "memory (GLIBC_TUNABLES " + MALLOC_KEEP + "); default: glibc's own settings, which hand "
                         "large freed blocks back to the kernel and fault them in again on the next chunk")
    ap.add_argument("--eager", choices=("off", "on", "both"), default="both",
                    help="our rows with PipelineOptions::eager_transfers off, on (comm shown as 'threads+eager', "
                         "'MPI+eager'), or both, side by side in the same rounds (the default)")
    ap.add_argument("--force", action="store_true", help="time even when the load average exceeds the cores")
    ap.add_argument("--out", default="", help="also write the table (markdown) here")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for one run")
    a = ap.parse_args()
    ranks_list = [int(p) for p in a.ranks.split(",") if p]
    if a.malloc == "keep":  # inherited by every process below: ours, PyTorch's, the sequential runs, mpirun's
        os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES", ""), MALLOC_KEEP]))
    if a.rounds < 1:
        print(f"peers: --rounds must be at least 1, got {a.rounds}", file=sys.stderr)
        return 2

    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"peers: skipped: PyTorch is not installed for {sys.executable} (bench/peers/run.sh installs it "
              f"into <build>/peers-venv; or set DUALPIPE_PEERS_PYTHON to a Python that has it)")
        return SKIP
    import torch

    cores = os.cpu_count() or 1
    load_before = load_line()
    if os.getloadavg()[0] > cores and not a.force:
        print(f"peers: the machine is busy (load average {load_before} on {cores} cores): timings would be "
              f"meaningless. Wait, or pass --force to time anyway (the load is recorded with the table).",
              file=sys.stderr)
        return 3

    started = datetime.datetime.now(datetime.timezone.utc)
    rows: list[dict] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dualpipe-peers-") as data:
        a.data = data
        max_stages = 2 * max(ranks_list)
        result_of([a.peers_bin, "data", "--dir", data, "--hidden", str(a.hidden), "--stages", str(max_stages),
                   "--chunks", str(a.chunks), "--micro-batch", str(a.micro_batch), "--seq-len", str(a.seq_len),
                   "--seed", str(a.seed)], a.timeout)
        steps = ["--steps", str(a.steps), "--warmup", str(a.warmup)]
        paired = [] if a.unpaired else ["--paired"]
        context: dict[str, str] = {}
        costs_of: dict[int, dict] = {}
        ours_seq: dict[int, dict] = {}  # the sequential runs, per S: the loss reference, and the unpaired baselines
        torch_seq: dict[int, dict] = {}
        for round_index, P in ((r, P) for r in range(a.rounds) for P in ranks_list):
            if a.unpaired:
                ours_seq, torch_seq = {}, {}  # each row times its own baselines; paired rows carry their own
            for S in (P, 2 * P):
                if S not in ours_seq:
                    ours_seq[S] = result_of([a.peers_bin, "sequential", "--dir", data, "--stages", str(S)] + steps,
                                            a.timeout)
                    context["ours"] = f"{ours_seq[S]['torch']}, BLAS: {ours_seq[S]['blas']}"
                if S not in torch_seq:
                    torch_seq[S] = result_of([sys.executable, os.path.abspath(__file__), "torch-sequential", "--data",
                                              data, "--stages", str(S)] + steps, a.timeout,
                                             env=dict(os.environ, OMP_NUM_THREADS="1"))
                    context["torch"] = f"PyTorch {torch_seq[S]['torch']}, BLAS: {torch_seq[S]['blas']}"
            if P not in costs_of:
                costs_of[P] = result_of([a.peers_bin, "costs", "--dir", data, "--ranks", str(P)], a.timeout)
            costs = costs_of[P]
            bound, bound_even = costs["bound"], costs.get("bound_even", {})

            def describe(c):
                return (f"F {c['forward_ms']:.2f} ms, fused backward {c['fused_backward_ms']:.2f} ms, input part "
                        f"{c['input_ms']:.2f} ms + weight part {c['weight_ms']:.2f} ms")
            context[f"costs{P}"] = (f"P={P}, per chunk: a middle stage {describe(costs)}; the first stage "
                                    f"{describe(costs['first'])}; the last stage (F with the loss) "
                                    f"{describe(costs['last'])}")

            def add(system, schedule, comm, res, seq, bound_value, bound_even_value=None):
                res["system"], res["schedule"], res["comm"] = system, schedule, comm
                res["P"], res["sequential_ms"], res["bound"] = P, seq["step_ms"], bound_value
                res["bound_even"] = bound_even_value
                res["round"] = round_index
                pairs = list(zip(res.get("paired_sequential_ms_all") or [], res["step_ms_all"]))
                if pairs:  # each step against the sequential step timed right before it
                    res["sequential_ms"] = statistics.median(q for q, _ in pairs)
                    res["efficiency"] = statistics.median(q / (P * t) for q, t in pairs)
                else:
                    res["efficiency"] = seq["step_ms"] / (P * res["step_ms"])
                ref = ours_seq[res["stages"]]["losses"]
                res["loss_sum"] = sum(res["losses"])
                res["loss_rel_diff"] = max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(res["losses"], ref)) \
                    if len(res["losses"]) == len(ref) else float("inf")
                if res["loss_rel_diff"] > LOSS_TOLERANCE:
                    problems.append(f"{system} {schedule} ({comm}, P={P}): first-step losses differ from the "
                                    f"sequential run's by {res['loss_rel_diff']:.3g} (relative)")
                rows.append(res)

            for name, (_, per_rank, _) in TORCH_SCHEDULES.items():
                try:
                    res = run_torch_pipeline(a, name, P, a.timeout)
                    add("PyTorch", name, "gloo", res, torch_seq[per_rank * P], bound.get(TORCH_TO_OURS.get(name, "")),
                        bound_even.get(TORCH_TO_OURS.get(name, "")))
                except RunError as e:
                    problems.append(str(e))
            for name, per_rank in OUR_SCHEDULES.items():
                base = [a.peers_bin, "pipeline", "--dir", data, "--schedule", name, "--ranks", str(P)] + steps + paired
                plain_runs = [("threads", base)]
                if a.mpiexec:
                    plain_runs.append(("MPI", [a.mpiexec, "-np", str(P)] + shlex.split(a.mpiexec_flags) + base +
                                       ["--mpi"]))
                runs = [] if a.eager == "on" else list(plain_runs)
                if a.eager != "off":
                    runs += [(comm + "+eager", cmd + ["--eager"]) for comm, cmd in plain_runs]
                for comm, cmd in runs:
                    try:
                        add("dualpipe", name, comm, result_of(cmd, a.timeout), ours_seq[per_rank * P], bound[name],
                            bound_even.get(name))
                    except RunError as e:
                        problems.append(str(e))
    load_after = load_line()
    rows = merge_rounds(rows)

    lines = [f"# Peer benchmark: dualpipe (TorchStage) and PyTorch's torch.distributed.pipelining",
             "",
             f"Date {started:%Y-%m-%d %H:%M} UTC. Machine: {machine_line()}. Load average (1, 5, 15 min) "
             f"{load_before} before, {load_after} after (the runs' own processes count in the second)"
             + (" -- above the core count before: timed with --force, figures are noisy." if
                float(load_before.split()[0]) > cores else "."),
             f"Model: stages of Linear({a.hidden},{4 * a.hidden}) -> GELU -> Linear({4 * a.hidden},{a.hidden}) "
             f"without bias, float32, MSE loss; {a.chunks} chunks of {a.micro_batch} x {a.seq_len} rows; the same "
             f"weights and data in both systems (seed {a.seed}). One thread per rank. {a.warmup} warm-up steps, "
             f"median of {a.steps} timed steps (each step's slowest rank)"
             + (f"; {a.rounds} rounds: every row ran once per round, a row shows the medians over the rounds and its "
                f"efficiency's range (min-max)"
                + (", each round's efficiency taken against the baseline timed in that round." if a.unpaired else ".")
                if a.rounds > 1 else "."),
             f"dualpipe: {context.get('ours', '?')}; modules of DeferredLinear (one-pass zero-bubble split). "
             f"PyTorch: {context.get('torch', '?')}, gloo over loopback, one process per rank.",
             ("Memory: every process of both systems ran with glibc's malloc keeping freed memory (GLIBC_TUNABLES "
              f"{MALLOC_KEEP}; --malloc default: glibc's own settings)." if a.malloc == "keep" else
              "Memory: glibc's malloc with its own settings (--malloc default)."),
             ""]
    for P in ranks_list:
        if f"costs{P}" in context:
            lines.append(f"Stage costs (ours, for the bound) {context[f'costs{P}']}.")
    lines += ["",
              "efficiency = sequential / (P x step), the sequential time being the same system's own single-process run "
              "of the same model (S stages)"
              + (". " if a.unpaired else
                 ": one sequential step runs right before every pipeline step (on rank 0, the other ranks waiting), each "
                 "step's efficiency is taken against its own, and a row shows the median over steps (sequential ms: "
                 "the median of those paired steps), so that the machine's drift from minute to minute cancels. ") +
              "bound = 1 - bubble ratio of our simulator with the measured per-stage "
              "costs (first, middle and last stage; for PyTorch's rows: our schedule of the same name); even bound: "
              "the same with every stage costing a middle stage's, which overstates what a pipeline of this model can "
              "reach where a rank holds the cheaper first stage. loss: the first step's total; Δ: the largest "
              "per-chunk relative difference from our sequential run. wait ms (ours): the time a rank spent waiting for data "
              "or transfers in the measured timeline (mean over ranks, median over steps); progress CPU ms (our MPI rows): "
              "CPU time per step of each rank's MPI progress thread (mpi/progress.hpp). +eager: our pipeline with "
              "PipelineOptions::eager_transfers (each output sent as soon as it is computed; a commit before an FB "
              "waits only for the FB's forward input, the rest before its backward half).",
              "",
              "| P | system | schedule | comm | S | step ms | sequential ms | efficiency | bound | even bound | wait ms "
              "| progress CPU ms | loss | Δ loss |",
              "|--:|--------|----------|------|--:|--------:|--------------:|-----------:|------:|-----------:|--------:"
              "|----------------:|-----:|-------:|"]
    for r in rows:
        b = f"{r['bound']:.3f}" if r.get("bound") is not None else "-"
        be = f"{r['bound_even']:.3f}" if r.get("bound_even") is not None else "-"
        wait = f"{r['wait_ms']:.2f}" if "wait_ms" in r else "-"
        cpu = f"{r['progress_cpu_ms']:.2f}" if r.get("progress") == "thread" else "-"
        eff = f"{r['efficiency']:.3f}"
        if len(r["runs"]) > 1:
            eff += " ({:.3f}-{:.3f})".format(*r["efficiency_range"])
        lines.append(f"| {r['P']} | {r['system']} | {r['schedule']} | {r['comm']} | {r['stages']} | {r['step_ms']:.2f} | "
                     f"{r['sequential_ms']:.2f} | {eff} | {b} | {be} | {wait} | {cpu} | {r['loss_sum']:.6f} | "
                     f"{r['loss_rel_diff']:.1e} |")
    if problems:
        lines += ["", "Problems:", ""] + [f"- {p}" for p in problems]
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)
        json_path = os.path.splitext(a.out)[0] + ".json"
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "load_before": load_before, "load_after": load_after, "context": context}, f,
                      indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
