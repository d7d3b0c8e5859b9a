#!/usr/bin/env bash
# The GPU report script (bench/gpu/run_gpu_report.sh --prebuilt) end to end, on the CUDA emulator: a kit whose
# programs are the emulated builds (wrappers that exec them; the example at small sizes, since the emulated
# GEMM is a plain loop) and an nvidia-smi that names an emulated card. It checks what the lent GPU machine
# would give back: exit status 0, every step ok, the report with every figure filled in, the JSON of every
# benchmark family and the Bubble pictures. The figures themselves mean nothing here.
#
# usage: gpu_report_dry_run.sh <bin dir of the build> <scratch dir>
set -euo pipefail
bin=$(cd "$1" && pwd)
scratch=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
rm -rf "$scratch"
mkdir -p "$scratch/kit/bin" "$scratch/path" "$scratch/out"
kit=$scratch/kit

wrap() {  # wrap <kit name> <emulated program> [extra arguments...]
  local name=$1 prog=$2
  shift 2
  [ -x "$bin/$prog" ] || { echo "gpu_report_dry_run: $bin/$prog is missing (build it first)" >&2; exit 1; }
  printf '#!/bin/sh\nexec "%s" %s "$@"\n' "$bin/$prog" "$*" >"$kit/bin/$name"
  chmod +x "$kit/bin/$name"
}
wrap test_cuda_cpu test_cuda_cpu
wrap test_gpu test_gpu_emulated
wrap dualpipe-cuda-mlp dualpipe-cuda-mlp-emulated --hidden 32 --rows 8
# One short repetition of each benchmark: enough to fill every counter.
wrap dualpipe-bench-gpu dualpipe-bench-gpu-emulated --benchmark_min_time=0.001
printf 'commit: %s (dry run)\ndate: %s\nnvcc: emulated\nglibc needed: 2.0\n' \
  "$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo 0000000)" "$(date -u +%F)" >"$kit/MANIFEST.txt"

cat >"$scratch/path/nvidia-smi" <<'EOF'
#!/bin/sh
case "$*" in
  -L) echo "GPU 0: Emulated Card (UUID: GPU-emulated)" ;;
  *--query-gpu=name*) echo "Emulated Card" ;;
  *--query-gpu=driver_version*) echo "0.0" ;;
  -q) echo "(emulated)" ;;
  *) echo "| NVIDIA-SMI 0.0    Driver Version: 0.0    CUDA Version: 13.0 |" ;;
esac
EOF
chmod +x "$scratch/path/nvidia-smi"

rc=0
(cd "$repo" && PATH=$scratch/path:$PATH OUT=$scratch/out bash bench/gpu/run_gpu_report.sh --prebuilt "$kit") \
  >"$scratch/stdout.txt" 2>&1 || rc=$?
cat "$scratch/stdout.txt"
fail() { echo "gpu_report_dry_run: FAIL: $*" >&2; exit 1; }
[ "$rc" -eq 0 ] || fail "run_gpu_report.sh exited with $rc (see above)"
report=$(ls "$scratch"/out/gpu-emulated-card-*.md 2>/dev/null | head -n1)
[ -n "$report" ] || fail "no report gpu-emulated-card-<date>.md in $scratch/out"
json=${report%.md}.json
[ -s "$json" ] || fail "no benchmark JSON beside the report"
[ -s "$scratch/out/run.log" ] || fail "no run.log"
grep -q 'CUDA tests (test_cuda_cpu, test_gpu): pass' "$report" || fail "the report does not say the tests passed"
# Every step ran and passed; every figure of the tables is there (n/a: a counter or benchmark went missing).
if grep -E '^\| [a-zA-Z0-9_-]+ \| (FAIL|TIMED OUT|SKIPPED)' "$report"; then fail "a step did not pass"; fi
for step in test_cuda_cpu test_gpu test_gpu_nccl example1 example2 example3 bench-FB bench-Step bench-Host bench-Bubble; do
  grep -q "^| $step | ok |" "$report" || fail "step $step is not in the report as ok"
done
if grep -n 'n/a\|not measured' "$report"; then fail "a figure is missing from the report (above)"; fi
[ "$(grep -c '^result: .* check=pass' "$report")" -eq 12 ] || fail "the report does not hold the example's 12 result lines with check=pass"
python3 - "$json" <<'PY' || fail "the benchmark JSON lacks a benchmark"
import json, sys
names = {b["run_name"] for b in json.load(open(sys.argv[1]))["benchmarks"]}
want = ["FB/comm_heavy/two_stream", "FB/comm_heavy/f_then_b", "FB/compute_heavy/two_stream",
        "FB/compute_heavy/f_then_b", "Step/dualpipe/with_transfers", "Step/dualpipe/without_transfers",
        "HostOverhead/eager", "HostOverhead/graph", "HostAhead/op_us:50", "Bubble/dualpipe", "Bubble/dualpipev"]
missing = [w for w in want if w + "/manual_time" not in names]
if missing:
    print("missing from the JSON:", missing)
    sys.exit(1)
PY
# The lent machine gives back at most 8 files from $OUT.
n=$(find "$scratch/out" -type f | wc -l)
[ "$n" -le 8 ] || fail "$n files in \$OUT, the lent machine gives back at most 8: $(find "$scratch/out" -type f)"
archive=${report%.md}-timelines.tar.gz
[ -s "$archive" ] || fail "no $(basename "$archive") beside the report"
listing=$(tar -tzf "$archive")
for s in dualpipe dualpipev; do
  for f in "bubble-$s.svg" "bubble-$s.json" "bubble-$s-simulated.svg"; do
    grep -qx "./$f" <<<"$listing" || fail "$f is not in $(basename "$archive")"
  done
done
grep -q 'test_gpu_nccl: test cases: *[1-9]' "$report" || fail "the report has no NCCL test cases"
grep -q 'test_gpu: test cases: *[1-9]' "$report" || fail "the report has no GPU test cases"
echo "gpu_report_dry_run: OK ($report)"
