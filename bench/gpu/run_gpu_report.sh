#!/usr/bin/env bash
# bench/gpu/run_gpu_report.sh: on a machine with an NVIDIA GPU, in one go:
#   1. configures and builds dualpipe with CUDA (Release; CUDA_ARCH, default 90) into ${DUALPIPE_BUILD_DIR:-build-gpu},
#      or, with --prebuilt DIR, takes the programs of a kit made elsewhere by bench/gpu/make_gpu_kit.sh (no
#      configure, no build: the GPU machine needs neither doctest nor Google Benchmark) and finds the
#      libraries they need there (libnccl.so.2, libcublas/libcublasLt.so.13),
#   2. runs the CUDA tests (build: ctest -L 'cuda|gpu' -LE emulated; kit: test_cuda_cpu and test_gpu): they must pass, not skip,
#   3. runs the example dualpipe-cuda-mlp (fp32, bf16, and fp32 with the forward_backward hook),
#   4. runs dualpipe-bench-gpu (3 repetitions, medians),
#   5. with --sanitize, runs a few GPU tests under compute-sanitizer (memcheck, racecheck) when it is found,
#   6. writes gpu-<card>-<date>.md (the report), .json (the benchmarks) and .log (nvidia-smi, the libraries
#      chosen and every step's output) into bench/results/, or into $OUT when OUT is set (then the log is
#      run.log, written as the run goes), and prints the report's path; the pictures of the Bubble
#      benchmark's last step go into gpu-<card>-<date>-timelines/ beside the report, or with OUT set into one
#      archive gpu-<card>-<date>-timelines.tar.gz (the lent machine gives back at most 8 files).
#
# usage: run_gpu_report.sh [--prebuilt DIR] [--sanitize] [--budget SECONDS]
#   --budget S   finish within about S seconds (default 420 with --prebuilt, none otherwise): every step runs
#                under `timeout` with the smaller of its own bound and the time left; a step left with under
#                10 s is skipped and counts as a failure.
# Exit status: 0 when everything ran and passed (the targets are reported, not enforced), 1 when a build,
# test, example or benchmark failed, timed out or was skipped (the report is still written), 2 for bad
# arguments, 77 when there is no GPU.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
prebuilt='' sanitize=no budget=''
while [ $# -gt 0 ]; do
  case $1 in
    --prebuilt) [ $# -ge 2 ] || { echo "run_gpu_report.sh: --prebuilt needs a folder" >&2; exit 2; }
                prebuilt=$2; shift 2 ;;
    --prebuilt=*) prebuilt=${1#*=}; shift ;;
    --sanitize) sanitize=yes; shift ;;
    --budget) [ $# -ge 2 ] || { echo "run_gpu_report.sh: --budget needs seconds" >&2; exit 2; }
              budget=$2; shift 2 ;;
    --budget=*) budget=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_gpu_report.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$budget" ] || { [ -n "$prebuilt" ] && budget=420 || budget=0; }
case $budget in ''|*[!0-9]*) echo "run_gpu_report.sh: --budget must be whole seconds (got '$budget')" >&2; exit 2 ;; esac

start=$SECONDS
day=$(date +%Y-%m-%d)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${OUT:-}" ]; then
  dest=$OUT
  log=$OUT/run.log        # written as the run goes: it comes back even when the call is cut off
else
  dest=bench/results
  log=$work/run.log       # moved next to the report once the card's name is known
fi
mkdir -p "$dest"
: >"$log"
: >"$work/steps.txt"
status=0

say() { printf '%s\n' "$*" | tee -a "$log"; }                     # to the terminal and the log
note() { printf '%s\n' "$*" >>"$log"; }                          # to the log only
die() { printf 'run_gpu_report.sh: %s\n' "$*" | tee -a "$log" >&2; exit 1; }
elapsed() { echo $((SECONDS - start)); }
linebuf=()
command -v stdbuf >/dev/null 2>&1 && linebuf=(stdbuf -oL -eL)

# step <name> <bound s> <command...>: runs the command under `timeout` (the bound, or the time left of the
# budget if less), its output into the log and $work/<name>.txt; records "<name> <exit> <seconds> <limit>"
# in $work/steps.txt and returns the command's exit status (124 or 137: timed out; 125: skipped).
step() {
  local name=$1 bound=$2 t rc t0 what
  shift 2
  t=$bound
  if [ "$budget" -gt 0 ]; then
    local left=$((budget - $(elapsed)))
    [ "$left" -lt "$t" ] && t=$left
    if [ "$t" -lt 10 ]; then
      say "== $name: SKIPPED (the time budget of ${budget}s is spent)"
      echo "SKIPPED: the time budget of ${budget}s was spent" >"$work/$name.txt"
      echo "$name skipped 0 0" >>"$work/steps.txt"
      return 125
    fi
  fi
  say "== $name (at $(elapsed)s; limit ${t}s): $*"
  t0=$SECONDS
  # Line-buffered output (stdbuf), so that a step killed at its limit still shows how far it got.
  timeout -k 5 "$t" ${linebuf[@]+"${linebuf[@]}"} "$@" 2>&1 | tee "$work/$name.txt" >>"$log"
  rc=${PIPESTATUS[0]}
  case $rc in 124|137) what="TIMED OUT (limit ${t}s)" ;; *) what="exit $rc" ;; esac
  say "-- $name: $what after $((SECONDS - t0))s"
  echo "$name $rc $((SECONDS - t0)) $t" >>"$work/steps.txt"
  return "$rc"
}

say "== run_gpu_report.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ($(uname -srm)); $(getconf GNU_LIBC_VERSION 2>/dev/null)"
mode="build here"
[ -n "$prebuilt" ] && mode="prebuilt kit $prebuilt"
say "   mode: $mode; budget: ${budget}s; sanitize: $sanitize; output: $dest"

# ---- The kit (--prebuilt): its programs, glibc, and the CUDA/NCCL libraries of this machine --------------
if [ -n "$prebuilt" ]; then
  kit=${prebuilt%/}
  for p in test_cuda_cpu test_gpu dualpipe-cuda-mlp dualpipe-bench-gpu; do
    [ -f "$kit/bin/$p" ] || die "--prebuilt $kit: $kit/bin/$p is missing (make the kit with bench/gpu/make_gpu_kit.sh and carry the whole folder)"
  done
  if [ -f "$kit/MANIFEST.txt" ]; then
    note "== $kit/MANIFEST.txt"
    cat "$kit/MANIFEST.txt" >>"$log"
    sed -n 's/^\(commit\|date\|nvcc\|glibc needed\): /   kit \1: /p' "$kit/MANIFEST.txt" | tee -a "$log"
  else
    say "   (no $kit/MANIFEST.txt)"
  fi
  # The kit needs at least the glibc it was built against (the static libstdc++ calls arc4random, 2.36).
  need=$(sed -n 's/^glibc needed: //p' "$kit/MANIFEST.txt" 2>/dev/null)
  have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
  if [ -n "$need" ] && [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
    die "the kit needs glibc $need, this machine has $have: build the kit on a machine with glibc <= $have, or run without --prebuilt"
  fi
  # The carried copy may have lost its executable bits (or be read-only): run a copy then.
  if [ ! -x "$kit/bin/test_gpu" ]; then
    mkdir -p "$work/kit"
    cp -r "$kit/bin" "$work/kit/"
    [ -d "$kit/lib" ] && cp -r "$kit/lib" "$work/kit/"
    chmod +x "$work/kit/bin/"*
    kit=$work/kit
    say "   (the kit's programs were not executable: running a copy in $kit)"
  fi
  bin=$kit/bin

  # Folders that may hold libnccl.so.2 and libcublas*.so.13: the toolkit's, then the pip wheels' (nvidia-nccl-cu13,
  # nvidia-cublas: site-packages/nvidia/<name>/lib) of each Python found, then the loader's cache.
  {
    for d in ${CUDA_HOME:+"$CUDA_HOME"/lib64 "$CUDA_HOME"/lib} /usr/local/cuda/lib64 /usr/local/cuda/lib \
             /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 /usr/local/cuda-*/lib \
             /usr/local/cuda-*/targets/x86_64-linux/lib; do
      [ -d "$d" ] && echo "$d"
    done
    for py in python3 /opt/torch/.venv/bin/python3 python; do
      command -v "$py" >/dev/null 2>&1 || continue
      "$py" - <<'PY' 2>/dev/null
import glob, os, site
roots = []
try:
    import nvidia  # a namespace package: the wheels' common folder
    roots += list(nvidia.__path__)
except Exception:
    pass
try:
    roots += [os.path.join(s, "nvidia") for s in site.getsitepackages()]
except Exception:
    pass
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "*", "lib"))):
        print(d)
PY
    done
    for d in /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /usr/local/lib/python3*/dist-packages/nvidia/*/lib; do
      [ -d "$d" ] && echo "$d"
    done
    ldconfig -p 2>/dev/null | awk '/(libnccl\.so\.2|libcublas(Lt)?\.so\.13) /{print $NF}' | xargs -r -n1 dirname
  } | while read -r d; do readlink -f "$d"; done | awk '!seen[$0]++' >"$work/libdirs.txt"
  note "== folders searched for libnccl.so.2 and libcublas*.so.13"
  cat "$work/libdirs.txt" >>"$log"
  # find_dir <file...>: the first folder searched that holds every file named.
  find_dir() {
    local d f ok
    while read -r d; do
      ok=1
      for f in "$@"; do [ -e "$d/$f" ] || ok=; done
      [ -n "$ok" ] && { echo "$d"; return 0; }
    done <"$work/libdirs.txt"
    return 1
  }
  nccl_dir=$(find_dir libnccl.so.2) ||
    die "libnccl.so.2 not found (searched: $(tr '\n' ' ' <"$work/libdirs.txt")); install the wheel nvidia-nccl-cu13 or set CUDA_HOME"
  cublas_dir=$(find_dir libcublas.so.13 libcublasLt.so.13) ||
    die "libcublas.so.13 with libcublasLt.so.13 not found (searched: $(tr '\n' ' ' <"$work/libdirs.txt")); install the wheel nvidia-cublas or set CUDA_HOME"
  new_path=$nccl_dir
  [ "$cublas_dir" != "$nccl_dir" ] && new_path=$new_path:$cublas_dir
  export LD_LIBRARY_PATH=$new_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # Their versions, through the libraries' own calls (no device needed).
  lib_versions=$(python3 - "$nccl_dir/libnccl.so.2" "$cublas_dir/libcublasLt.so.13" <<'PY' 2>/dev/null
import ctypes, sys
out = []
try:
    v = ctypes.c_int()
    ctypes.CDLL(sys.argv[1]).ncclGetVersion(ctypes.byref(v))
    out.append("NCCL %d.%d.%d" % (v.value // 10000, v.value % 10000 // 100, v.value % 100))
except Exception as e:
    out.append("NCCL version unknown (%s)" % e)
try:
    f = ctypes.CDLL(sys.argv[2]).cublasLtGetVersion
    f.restype = ctypes.c_size_t
    v = f()
    out.append("cuBLASLt %d.%d.%d" % (v // 10000, v % 10000 // 100, v % 100))
except Exception as e:
    out.append("cuBLASLt version unknown (%s)" % e)
print(", ".join(out))
PY
  ) || lib_versions="versions unknown"
  say "   libnccl.so.2: $nccl_dir"
  say "   libcublas.so.13, libcublasLt.so.13: $cublas_dir"
  say "   ($lib_versions); LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  missing=
  for p in test_cuda_cpu test_gpu dualpipe-cuda-mlp dualpipe-bench-gpu; do
    note "== ldd $p"
    ldd "$bin/$p" >"$work/ldd.txt" 2>&1
    cat "$work/ldd.txt" >>"$log"
    if grep -q 'not found' "$work/ldd.txt"; then
      missing=1
      grep 'not found' "$work/ldd.txt" | sed "s|^|   $p: |" | tee -a "$log" >&2
    fi
  done
  [ -z "$missing" ] || die "the kit's programs cannot load here (see above)"
  say "   ldd: every library of the kit's programs is found"
fi

# ---- The GPU ----------------------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  say "run_gpu_report.sh: no NVIDIA GPU here (nvidia-smi is missing or fails); run it on a GPU machine" >&2
  exit 77
fi
command -v python3 >/dev/null || die "needs python3 to write the report"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)
driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1)
slug=$(printf '%s' "$card" | tr '[:upper:]' '[:lower:]' | sed -e 's/nvidia//g' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
out=$dest/gpu-$slug-$day.md
json=$dest/gpu-$slug-$day.json
if [ -z "${OUT:-}" ]; then
  mv "$log" "$dest/gpu-$slug-$day.log"
  log=$dest/gpu-$slug-$day.log
fi
say "== GPU: $card; driver $driver (CUDA $driver_cuda)"
note "== nvidia-smi"
nvidia-smi >>"$log" 2>&1
note "== nvidia-smi -q"
timeout 30 nvidia-smi -q >>"$log" 2>&1

# ---- Build (without --prebuilt) ---------------------------------------------------------------------------
if [ -z "$prebuilt" ]; then
  build=${DUALPIPE_BUILD_DIR:-build-gpu}
  arch=${CUDA_ARCH:-90}
  say "== build ($build, sm_$arch)"
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" -DDUALPIPE_ENABLE_CUDA=ON \
        >"$work/configure.txt" 2>&1 || { cat "$work/configure.txt" >>"$log"; cat "$work/configure.txt"; die "configure failed"; }
  cat "$work/configure.txt" >>"$log"
  grep -E '^-- dualpipe' "$work/configure.txt" | tee -a "$log" >"$work/support.txt"
  cmake --build "$build" -j "$(nproc)" --target test_cuda_cpu test_gpu dualpipe-cuda-mlp dualpipe-bench-gpu \
        >"$work/build.txt" 2>&1 || { cat "$work/build.txt" >>"$log"; tail -n 60 "$work/build.txt"; die "build failed"; }
  cat "$work/build.txt" >>"$log"
  bin=$build/bin
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  nvcc_version=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -n1)
  how="built here ($build, sm_$arch)"
else
  grep -E '^support: ' "$kit/MANIFEST.txt" 2>/dev/null | sed 's/^support: //' >"$work/support.txt"
  commit=$(sed -n 's/^commit: \([0-9a-f]\{7\}\)[0-9a-f]*\(.*\)/\1\2/p' "$kit/MANIFEST.txt" 2>/dev/null)
  nvcc_version=$(sed -n 's/^nvcc: \([0-9.]*\).*/\1/p' "$kit/MANIFEST.txt" 2>/dev/null)
  how="prebuilt kit ($(sed -n 's/^date: //p' "$kit/MANIFEST.txt" 2>/dev/null)); libnccl.so.2 from $nccl_dir, libcublas.so.13 from $cublas_dir ($lib_versions)"
fi

# ---- NCCL on one machine: the loopback interface for its bootstrap, and its warnings in the log ---------
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
say "   NCCL_SOCKET_IFNAME=$NCCL_SOCKET_IFNAME NCCL_DEBUG=$NCCL_DEBUG"

# ---- Tests ---------------------------------------------------------------------------------------------
# A skipped test (exit 77: no device) is a failure here: this script runs where there is a GPU.
tests_ok=yes
if [ -z "$prebuilt" ]; then
  if step ctest 1800 bash -c "cd '$build' && ctest -L 'cuda|gpu' -LE emulated --output-on-failure" &&
     ! grep -q 'Skipped\|Not Run' "$work/ctest.txt"; then :; else tests_ok=no; fi
  tail -n 15 "$work/ctest.txt"
else
  step test_cuda_cpu 60 "$bin/test_cuda_cpu" || tests_ok=no
  # The NCCL cases in a step of their own, last: a stuck NCCL bootstrap or abort then costs only them.
  step test_gpu 150 "$bin/test_gpu" --duration=true --test-case-exclude='*Nccl*' || tests_ok=no
  step test_gpu_nccl 90 "$bin/test_gpu" --duration=true --test-case='*Nccl*' || tests_ok=no
  if grep -q '^\[doctest\] test cases: *0 |' "$work/test_gpu_nccl.txt" 2>/dev/null; then
    say "   test_gpu_nccl ran no test case: the kit's test_gpu was built without NCCL"
    tests_ok=no
  fi
  grep -h '^\[doctest\] \(test cases\|Status\)' "$work/test_cuda_cpu.txt" "$work/test_gpu.txt" \
       "$work/test_gpu_nccl.txt" 2>/dev/null
fi
[ "$tests_ok" = yes ] || status=1

# ---- Example -------------------------------------------------------------------------------------------
: >"$work/example.txt"
i=0
for args in "--dtype fp32" "--dtype bf16" "--dtype fp32 --hook"; do
  i=$((i + 1))
  echo "\$ dualpipe-cuda-mlp $args" >>"$work/example.txt"
  # shellcheck disable=SC2086
  step "example$i" 45 "$bin/dualpipe-cuda-mlp" $args
  rc=$?
  cat "$work/example$i.txt" >>"$work/example.txt"
  if [ "$rc" -ne 0 ]; then
    echo "(exit status $rc)" >>"$work/example.txt"
    status=1
  fi
done
grep '^result:' "$work/example.txt"

# ---- Benchmarks: one run per family, so that a hang or a crash in one loses only its own figures ---------
# The Bubble family also draws its last measured step and the simulated one (SVG, Chrome trace): into
# gpu-<card>-<date>-timelines/ beside the report; with OUT set, packed into one archive there at the end (the
# lent machine gives back at most 8 files: the report, the JSON, run.log and this archive make 4).
if [ -n "${OUT:-}" ]; then timelines=$work/gpu-$slug-$day-timelines; else timelines=$dest/gpu-$slug-$day-timelines; fi
mkdir -p "$timelines"
export DUALPIPE_BENCH_TIMELINE_DIR=$timelines
for family in FB:60 Step:90 Host:60 Bubble:120; do
  name=${family%%:*}
  step "bench-$name" "${family#*:}" "$bin/dualpipe-bench-gpu" --benchmark_filter="^$name" \
       --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
       --benchmark_out="$work/bench-$name.json" --benchmark_out_format=json || status=1
done

# ---- compute-sanitizer on a few GPU tests (--sanitize) --------------------------------------------------
sanitizer="not asked for (--sanitize)"
if [ "$sanitize" = yes ]; then
  cs=$(command -v compute-sanitizer)
  for c in /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer; do
    [ -z "$cs" ] && [ -x "$c" ] && cs=$c
  done
  if [ -z "$cs" ]; then
    sanitizer="compute-sanitizer not found"
    say "== sanitize: $sanitizer"
  else
    sanitizer=
    # Small cases only: the tools slow kernels down many times over. Exit 86: the tool found errors.
    for t in "memcheck:Gpu.Raii.*,Gpu.CudaLocal.TransferInStreamOrder,Gpu.CudaLocal.NoCopy,Gpu.Pipeline.Eval" \
             "racecheck:Gpu.CudaLocal.TransferInStreamOrder,Gpu.Pipeline.Eval"; do
      tool=${t%%:*}
      step "sanitize-$tool" 90 "$cs" --tool "$tool" --error-exitcode 86 "$bin/test_gpu" "--test-case=${t#*:}"
      rc=$?
      summary=$(grep -o 'ERROR SUMMARY: [0-9]* errors\?' "$work/sanitize-$tool.txt" | tail -n1)
      case $rc in
        0) r="clean (${summary:-no summary})" ;;
        86) r="ERRORS: $summary"; status=1 ;;
        124|137) r="timed out (inconclusive)" ;;
        125) r="skipped (time budget)" ;;
        *) r="exit $rc, ${summary:-no error summary} (inconclusive: see the log)" ;;
      esac
      sanitizer="$sanitizer${sanitizer:+; }$tool on ${t#*:}: $r"
    done
  fi
fi

# ---- Report --------------------------------------------------------------------------------------------
{
  echo "card=$card"
  echo "driver=$driver"
  echo "driver_cuda=$driver_cuda"
  echo "cuda=${nvcc_version:-?}"
  echo "day=$day"
  echo "commit=${commit:-unknown}"
  echo "tests_ok=$tests_ok"
  echo "how=$how"
  echo "sanitizer=$sanitizer"
  echo "elapsed=$(elapsed)"
  echo "log=$(basename "$log")"
  echo "prebuilt=${prebuilt:+yes}"
  echo "timelines=$timelines"
  echo "timelines_packed=${OUT:+yes}"
} >"$work/facts.txt"
if ! python3 - "$json" "$out" "$work" <<'PY'
import glob, json, os, sys
json_path, out, work = sys.argv[1:4]
facts = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(work, "facts.txt")) if "=" in l)
card, day, tests_ok = facts["card"], facts["day"], facts["tests_ok"]

def read(name):
    p = os.path.join(work, name)
    return open(p, errors="replace").read() if os.path.exists(p) else ""

# One JSON for every family's run; a run cut off leaves an unreadable file, noted in the report.
merged, broken = {"context": None, "benchmarks": []}, []
for p in sorted(glob.glob(os.path.join(work, "bench-*.json"))):
    try:
        d = json.load(open(p))
    except Exception:
        broken.append(os.path.basename(p)[len("bench-"):-len(".json")])
        continue
    merged["context"] = merged["context"] or d.get("context")
    merged["benchmarks"] += d.get("benchmarks", [])
json.dump(merged, open(json_path, "w"), indent=2)

med = {}
for b in merged["benchmarks"]:
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

def target(value, met):
    return "not measured" if value is None else ("met" if met(value) else "NOT met")

steps = [l.split() for l in read("steps.txt").splitlines() if l.strip()]
def ok(rc): return rc == "0"

lines = []
w = lines.append
w(f"# GPU report: {card}, {day}")
w("")
w(f"- card: {card}; driver {facts['driver']} (CUDA {facts['driver_cuda']}); built with CUDA {facts['cuda']}; commit {facts['commit']}")
w(f"- programs: {facts['how']}")
support = "; ".join(l.strip().lstrip("- ") for l in read("support.txt").splitlines() if l.strip())
if support:
    w("- " + support)
tests = "ctest -L 'cuda|gpu' -LE emulated" if not facts.get("prebuilt") else "test_cuda_cpu, test_gpu"
w(f"- CUDA tests ({tests}): {'pass' if tests_ok == 'yes' else 'FAIL (see below)'}")
for name in ("test_cuda_cpu", "test_gpu", "test_gpu_nccl"):
    for l in read(name + ".txt").splitlines():
        if l.startswith("[doctest] test cases"):
            w(f"  - {name}: {l[len('[doctest] '):]}")
w("- benchmarks: medians of 3 repetitions; raw JSON: " + os.path.basename(json_path)
  + (f" (no figures from: {', '.join(broken)}: the run was cut off)" if broken else ""))
w(f"- compute-sanitizer: {facts['sanitizer']}")
w(f"- whole run: {facts['elapsed']} s; log: {facts['log']}")
w("")
w("## Steps")
w("| step | result | seconds | limit (s) |")
w("|---|---|---:|---:|")
for name, rc, took, limit in steps:
    res = {"0": "ok", "124": "TIMED OUT", "137": "TIMED OUT", "skipped": "SKIPPED (budget)"}.get(rc, f"FAIL (exit {rc})")
    w(f"| {name} | {res} | {took} | {limit} |")
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
w(f"| {f(a)} | {f(b)} | {f(r, '%.3f')} | <= 1.05: {target(r, lambda x: x <= 1.05)} |")
w("")
w("## Host overhead per op (ZB1P, one rank, 32 chunks)")
w("| mode | ns per op (step wall / ops) | host issue ns per op | issue / step |")
w("|---|---:|---:|---:|")
w(f"| eager, tiny ops | {f(counter('HostOverhead/eager', 'ns_per_op'), '%.0f')} | {f(counter('HostOverhead/eager', 'issue_ns_per_op'), '%.0f')} | {f(counter('HostOverhead/eager', 'issue_fraction'), '%.3f')} |")
w(f"| graph replay, tiny ops | {f(counter('HostOverhead/graph', 'ns_per_op'), '%.0f')} | - | - |")
fr = counter('HostAhead/op_us:50', 'issue_fraction')
w(f"| eager, 50 us ops | {f(counter('HostAhead/op_us:50', 'ns_per_op'), '%.0f')} | {f(counter('HostAhead/op_us:50', 'issue_ns_per_op'), '%.0f')} | {f(fr, '%.3f')} |")
w("")
w(f"Target: the host runs ahead of the GPU for 50 us ops (issue / step < 1): {target(fr, lambda x: x < 1)}.")
w("")
w("## Measured against simulated bubble (4 ranks on one GPU, 16 chunks, GPU timeline)")
w("The simulator (async model) gets the F, B, W and FB times of the same stage, measured twice: each op alone")
w("on an idle GPU, and the mean of the step's own spans (the four ranks share the GPU, so their ops may run a")
w("little slower side by side); its transfer latency is the hop measured on two ranks that only wait for each")
w("other (end of an op to the start of the next rank's op that needs its output). A span starts when its data")
w("is there, so the wait for a transfer is bubble. rel. diff = |measured - simulated| / simulated (the target);")
w("pp = the same difference in percentage points; step ratio = measured / simulated step time.")
w("")
w("| schedule | measured | simulated, ops alone | rel. diff | pp | step ratio | target <= 10% | simulated, step's ops | rel. diff | target <= 10% |")
w("|---|---:|---:|---:|---:|---:|---|---:|---:|---|")
for s in ("dualpipe", "dualpipev"):
    n = f"Bubble/{s}"
    m, si, d = counter(n, "measured"), counter(n, "simulated"), counter(n, "rel_diff")
    pp, ms = counter(n, "pp_diff"), counter(n, "makespan_ratio")
    si2, d2 = counter(n, "simulated_in_step"), counter(n, "rel_diff_in_step")
    w(f"| {s} | {f(m, '%.3f')} | {f(si, '%.3f')} | {f(d, '%.3f')} | {f(pp, '%.1f')} | {f(ms, '%.3f')} "
      f"| {target(d, lambda x: x <= 0.10)} | {f(si2, '%.3f')} | {f(d2, '%.3f')} | {target(d2, lambda x: x <= 0.10)} |")
w("")
w("| schedule | F / B / W / FB alone (us) | F / B / W / FB in the step (us) | hop (us) | message copy alone (us) |")
w("|---|---|---|---:|---:|")
for s in ("dualpipe", "dualpipev"):
    n = f"Bubble/{s}"
    alone = " / ".join(f(counter(n, k), "%.0f") for k in ("F_us", "B_us", "W_us", "FB_us"))
    step_ = " / ".join(f(counter(n, k), "%.0f") for k in ("step_F_us", "step_B_us", "step_W_us", "step_FB_us"))
    w(f"| {s} | {alone} | {step_} | {f(counter(n, 'hop_us'), '%.1f')} | {f(counter(n, 'copy_us'), '%.1f')} |")
w("")
pictures = sorted(os.path.basename(p) for p in glob.glob(os.path.join(facts["timelines"], "bubble-*")))
if pictures:
    where = os.path.basename(facts["timelines"]) + ("/" if not facts.get("timelines_packed") else ".tar.gz")
    w(f"Pictures of the last measured step and of its simulation (in `{where}` beside this report): "
      + ", ".join(pictures) + ".")
    w("")
# The output of every step that did not pass (tails), so that the report alone says what went wrong.
for name, rc, took, limit in steps:
    if ok(rc) or name.startswith("example"):
        continue
    w(f"## Output of {name} (tail)")
    w("```")
    w("\n".join(read(name + ".txt").splitlines()[-60:]) or "(no output)")
    w("```")
    w("")
open(out, "w").write("\n".join(lines).rstrip("\n") + "\n")
PY
then
  status=1
  say "run_gpu_report.sh: writing the report failed (see above)"
fi
if [ -n "${OUT:-}" ] && [ -n "$(ls -A "$timelines" 2>/dev/null)" ]; then
  tar -czf "$dest/$(basename "$timelines").tar.gz" -C "$timelines" . || say "run_gpu_report.sh: packing $timelines failed"
fi
# Every step that failed, timed out or was skipped fails the run (compute-sanitizer's own verdict is above).
awk '$2 != "0" && $1 !~ /^sanitize-/ {bad = 1} END {exit bad}' "$work/steps.txt" || status=1
say "== done in $(elapsed)s, exit status $status"
say "report: $out"
say "benchmarks: $json"
say "log: $log"
exit $status
