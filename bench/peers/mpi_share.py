#!/usr/bin/env python3
"""MPI's share of a pipeline step: our TorchStage pipeline at P=2 on rank threads and on MPI processes.

Usage (docs/benchmarks-peers.md#mpis-share):
    python3 bench/peers/mpi_share.py --peers-bin build/bin/dualpipe-peers [--rounds 8] [--out FILE.md]

Runs, round after round, the same model (the peer benchmark's) under three set-ups: rank threads in one
process (InProcessCommunicator), MPI with messages moving only inside the communicator's calls and the
previous 200 us spin (MpiProgress::on_wait: what MpiCommunicator did before the progress thread), and MPI
with the library's defaults (a progress thread, 1 ms spin). Interleaving the set-ups round by round, and
comparing each MPI run with the threads run of its own round, keeps a slow minute of a shared machine from
favouring one set-up. Writes a markdown table: step time (median over rounds of each run's median step),
MPI/threads (median over rounds of the per-round ratio), the time ranks spent waiting for data, CPU time per
rank and step, and the progress thread's CPU time per step. Needs only dualpipe-peers and mpirun (no
PyTorch). Refuses a machine whose load average exceeds its cores (--force times anyway).
"""
import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

SETUPS = [
    ("threads", "rank threads", None),
    ("mpi-on-wait", "MPI, on_wait, 200 us spin (before)", ["--progress", "wait", "--spin-us", "200"]),
    ("mpi-default", "MPI, defaults: progress thread, 1 ms spin", []),
]


def result_of(cmd, timeout):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("result: "):
            return json.loads(line[len("result: "):])
    raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode} without a result:\n{proc.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-bin", required=True, help="the dualpipe-peers program")
    ap.add_argument("--mpiexec", default=shutil.which("mpirun") or "", help="mpirun")
    ap.add_argument("--mpiexec-flags", default="--oversubscribe --mca btl_vader_single_copy_mechanism none" +
                    (" --allow-run-as-root" if os.geteuid() == 0 else ""),
                    help="flags after 'mpirun -np 2' (default: no single-copy, the case that needs progress)")
    ap.add_argument("--schedules", default="dualpipe,dualpipev")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--force", action="store_true", help="time even when the load average exceeds the cores")
    ap.add_argument("--out", default="", help="also write the table (markdown) here, the raw runs next to it")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    if a.rounds < 1 or a.steps < 1:
        print("mpi_share: --rounds and --steps must be at least 1", file=sys.stderr)
        return 2
    if not a.mpiexec:
        print("mpi_share: no mpirun found (--mpiexec)", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if os.getloadavg()[0] > cores and not a.force:
        print(f"mpi_share: load average {load_before} exceeds the {cores} cores: the figures would mean nothing "
              f"(--force times anyway)", file=sys.stderr)
        return 3
    started = datetime.datetime.now(datetime.timezone.utc)
    schedules = a.schedules.split(",")
    runs = {(s, key): [] for s in schedules for key, _, _ in SETUPS}
    with tempfile.TemporaryDirectory(prefix="dualpipe-mpi-share-") as data:
        result_of([a.peers_bin, "data", "--dir", data, "--hidden", str(a.hidden), "--stages", "4", "--chunks",
                   str(a.chunks)], a.timeout)
        for r in range(a.rounds):
            for s in schedules:
                for key, _, extra in SETUPS:
                    cmd = [a.peers_bin, "pipeline", "--dir", data, "--schedule", s, "--ranks", "2", "--steps",
                           str(a.steps), "--warmup", str(a.warmup)]
                    if extra is not None:
                        cmd = [a.mpiexec, "-np", "2"] + shlex.split(a.mpiexec_flags) + cmd + ["--mpi"] + extra
                    res = result_of(cmd, a.timeout)
                    runs[(s, key)].append(res)
                    print(f"round {r + 1}/{a.rounds} {s} {key}: step {res['step_ms']:.1f} ms, wait "
                          f"{res['wait_ms']:.1f} ms", file=sys.stderr, flush=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    med = statistics.median
    lines = ["# MPI's share: the P=2 pipeline on rank threads and on MPI processes", "",
             f"Date {started:%Y-%m-%d %H:%M} UTC, {cores} cores, load average {load_before} before, {load_after} "
             f"after. Model: the peer benchmark's (hidden {a.hidden}, {a.chunks} chunks of 3 x 64 rows, "
             f"DeferredLinear), {a.rounds} rounds, each run {a.warmup} warm-up + {a.steps} timed steps. MPI: "
             f"`mpirun -np 2 {a.mpiexec_flags}`.", "",
             "step ms: median over rounds of each run's median step (min-max over rounds). MPI / threads: median over "
             "rounds of the MPI run's step over the same round's threads run. wait ms: time a rank spent waiting "
             "for data or transfers (measured timeline). CPU ms: CPU time per rank and step (the process's). "
             "progress CPU ms: the progress thread's share of it.", "",
             "| schedule | set-up | step ms | MPI / threads | wait ms | CPU ms | progress CPU ms |",
             "|----------|--------|--------:|--------------:|--------:|-------:|----------------:|"]
    for s in schedules:
        base = [x["step_ms"] for x in runs[(s, "threads")]]
        for key, label, _ in SETUPS:
            xs = runs[(s, key)]
            steps = [x["step_ms"] for x in xs]
            ratio = "-" if key == "threads" else f"{med([x / b for x, b in zip(steps, base)]):.3f}"
            pcpu = f"{med([x['progress_cpu_ms'] for x in xs]):.2f}" if xs[0].get("progress") == "thread" else "-"
            lines.append(f"| {s} | {label} | {med(steps):.1f} ({min(steps):.1f}-{max(steps):.1f}) | {ratio} | "
                         f"{med([x['wait_ms'] for x in xs]):.2f} | {med([x['cpu_ms'] for x in xs]):.1f} | {pcpu} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump({f"{s} {k}": v for (s, k), v in runs.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
