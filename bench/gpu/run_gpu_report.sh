#!/usr/bin/env bash
# bench/gpu/run_gpu_report.sh: on a machine with an NVIDIA GPU, in one go:
#   1. configures and builds dualpipe with CUDA (Release; CUDA_ARCH, default 90) into ${DUALPIPE_BUILD_DIR:-build-gpu},
#   2. runs the CUDA tests (ctest -L 'cuda|gpu': they must pass, not skip),
#   3. runs the example dualpipe-cuda-mlp (fp32, bf16, and fp32 with the forward_backward hook),
#   4. runs dualpipe-bench-gpu (3 repetitions, medians),
#   5. writes bench/results/gpu-<card>-<date>.md (and the benchmark JSON next to it) with the figures and
#      the issue's targets, and prints its path.
# Exit status: 0 when everything ran and passed (the targets are reported, not enforced), 1 when a build,
# test or example failed (the report is still written, with the failure), 77 when there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "run_gpu_report.sh: no NVIDIA GPU here (nvidia-smi fails); run it on a GPU machine" >&2
  exit 77
fi
command -v python3 >/dev/null || { echo "run_gpu_report.sh: needs python3 to write the report" >&2; exit 1; }

build=${DUALPIPE_BUILD_DIR:-build-gpu}
arch=${CUDA_ARCH:-90}
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)
slug=$(printf '%s' "$card" | tr '[:upper:]' '[:lower:]' | sed -e 's/nvidia//g' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
day=$(date +%Y-%m-%d)
out=bench/results/gpu-$slug-$day.md
json=bench/results/gpu-$slug-$day.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p bench/results
status=0

echo "== build ($build, sm_$arch)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" -DDUALPIPE_ENABLE_CUDA=ON \
      >"$work/configure.txt" 2>&1 || { cat "$work/configure.txt"; exit 1; }
grep -E '^-- dualpipe' "$work/configure.txt" | tee "$work/support.txt"
cmake --build "$build" -j "$(nproc)" --target test_cuda_cpu test_gpu dualpipe-cuda-mlp dualpipe-bench-gpu \
      >"$work/build.txt" 2>&1 || { tail -n 60 "$work/build.txt"; exit 1; }

echo "== CUDA tests (ctest -L 'cuda|gpu')"
# A skipped test is a failure here: this script runs where there is a GPU.
if (cd "$build" && ctest -L 'cuda|gpu' --output-on-failure) >"$work/tests.txt" 2>&1 &&
   ! grep -q 'Skipped\|Not Run' "$work/tests.txt"; then
  tests_ok=yes
else
  tests_ok=no
  status=1
fi
tail -n 15 "$work/tests.txt"

echo "== example"
: >"$work/example.txt"
for args in "--dtype fp32" "--dtype bf16" "--dtype fp32 --hook"; do
  echo "\$ dualpipe-cuda-mlp $args" >>"$work/example.txt"
  # shellcheck disable=SC2086
  if ! "$build/bin/dualpipe-cuda-mlp" $args >>"$work/example.txt" 2>&1; then
    echo "(exit status $?)" >>"$work/example.txt"
    status=1
  fi
done
grep '^result:' "$work/example.txt" || true

echo "== benchmarks"
if ! "$build/bin/dualpipe-bench-gpu" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
     --benchmark_format=json --benchmark_out="$json" --benchmark_out_format=json >"$work/bench.txt" 2>&1; then
  tail -n 30 "$work/bench.txt"
  status=1
fi

nvcc_version=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -n1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$json" "$out" "$work" "$card" "$driver" "${nvcc_version:-?}" "$day" "$commit" "$tests_ok" <<'PY'
import json, os, sys
json_path, out, work, card, driver, cuda, day, commit, tests_ok = sys.argv[1:10]

def read(name):
    p = os.path.join(work, name)
    return open(p).read() if os.path.exists(p) else ""

med = {}
if os.path.exists(json_path):
    for b in json.load(open(json_path)).get("benchmarks", []):
        if b.get("aggregate_name") == "median":
            # Benchmarks with manual time are named "<name>/manual_time".
            n = b["run_name"]
            med[n[: -len("/manual_time")] if n.endswith("/manual_time") else n] = b

def us(name):
    b = med.get(name)
    if not b: return None
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b.get("time_unit", "ns")]
    return b["real_time"] * scale

def counter(name, key):
    b = med.get(name)
    return None if not b or key not in b else b[key]

def f(x, fmt="%.1f"):
    return "n/a" if x is None else fmt % x

def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b

lines = []
w = lines.append
w(f"# GPU report: {card}, {day}")
w("")
w(f"- card: {card}; driver {driver}; CUDA {cuda}; commit {commit}")
w("- " + "; ".join(l.strip().lstrip("- ") for l in read("support.txt").splitlines()))
w(f"- CUDA tests (ctest -L 'cuda|gpu'): {'pass' if tests_ok == 'yes' else 'FAIL (see below)'}")
w("- benchmarks: medians of 3 repetitions; raw JSON: " + os.path.basename(json_path))
w("")
w("## Example: dualpipe-cuda-mlp")
w("```")
w(read("example.txt").rstrip())
w("```")
w("")
w("## Overlapped forward and backward (one FB op)")
w("| stage | two streams (us) | F then B (us) | speed-up |")
w("|---|---:|---:|---:|")
for st in ("comm_heavy", "compute_heavy"):
    a, b = us(f"FB/{st}/two_stream"), us(f"FB/{st}/f_then_b")
    w(f"| {st} | {f(a)} | {f(b)} | {f(ratio(b, a), '%.2fx')} |")
w("")
w("## Communication hidden (DualPipe, 4 ranks on one GPU, 8 MiB messages)")
a, b = us("Step/dualpipe/with_transfers"), us("Step/dualpipe/without_transfers")
r = ratio(a, b)
w("| with transfers (us) | without (us) | ratio | target |")
w("|---:|---:|---:|---|")
w(f"| {f(a)} | {f(b)} | {f(r, '%.3f')} | <= 1.05: {'met' if r is not None and r <= 1.05 else 'NOT met'} |")
w("")
w("## Host overhead per op (ZB1P, one rank, 32 chunks)")
w("| mode | ns per op (step wall / ops) | host issue ns per op | issue / step |")
w("|---|---:|---:|---:|")
w(f"| eager, tiny ops | {f(counter('HostOverhead/eager', 'ns_per_op'), '%.0f')} | {f(counter('HostOverhead/eager', 'issue_ns_per_op'), '%.0f')} | {f(counter('HostOverhead/eager', 'issue_fraction'), '%.3f')} |")
w(f"| graph replay, tiny ops | {f(counter('HostOverhead/graph', 'ns_per_op'), '%.0f')} | - | - |")
fr = counter('HostAhead/op_us:50', 'issue_fraction')
w(f"| eager, 50 us ops | {f(counter('HostAhead/op_us:50', 'ns_per_op'), '%.0f')} | {f(counter('HostAhead/op_us:50', 'issue_ns_per_op'), '%.0f')} | {f(fr, '%.3f')} |")
w("")
w(f"Target: the host runs ahead of the GPU for 50 us ops (issue / step < 1): {'met' if fr is not None and fr < 1 else 'NOT met'}.")
w("")
w("## Measured against simulated bubble (4 ranks on one GPU, 16 chunks, GPU timeline)")
w("| schedule | measured | simulated (async model) | rel. diff | F / B / W / FB (us) | target <= 10% |")
w("|---|---:|---:|---:|---|---|")
for s in ("dualpipe", "dualpipev"):
    n = f"Bubble/{s}"
    m, si, d = counter(n, "measured"), counter(n, "simulated"), counter(n, "rel_diff")
    costs = " / ".join(f(counter(n, k), "%.0f") for k in ("F_us", "B_us", "W_us", "FB_us"))
    w(f"| {s} | {f(m, '%.3f')} | {f(si, '%.3f')} | {f(d, '%.3f')} | {costs} | {'met' if d is not None and d <= 0.10 else 'NOT met'} |")
w("")
if tests_ok != "yes":
    w("## Test output (tail)")
    w("```")
    w("\n".join(read("tests.txt").splitlines()[-60:]))
    w("```")
open(out, "w").write("\n".join(lines) + "\n")
PY
echo "report: $out"
exit $status
