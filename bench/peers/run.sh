#!/usr/bin/env bash
# The peer benchmark in one command (docs/benchmarks-peers.md): PyTorch's torch.distributed.pipelining and
# dualpipe's TorchStage on the same model, weights and data, one markdown table.
#
#   bash bench/peers/run.sh [--build-dir build] [--out FILE.md] [--small] [--force] [peers.py options...]
#
# It installs what it needs where it is missing: a Python virtual environment with PyTorch from pip in
# <build>/peers-venv (large: PyTorch's default wheels bring CUDA libraries; PEERS_PIP_ARGS adds pip options,
# e.g. another package index), configures <build> if needed and builds dualpipe-peers.
#   --no-install   never create the environment or install PyTorch: exit 77 (skip) when none is found
#   --no-build     use <build>/bin/dualpipe-peers as it is
#   --small        a quick configuration: P=2, hidden 64, 8 chunks, 1 warm-up and 2 timed steps
#   --force        time even when the load average exceeds the number of cores (the load is recorded)
# The Python used: $DUALPIPE_PEERS_PYTHON, else <build>/peers-venv/bin/python.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build="$repo/build"
install=1 compile=1
args=()
while (($#)); do
  case "$1" in
    --build-dir) build=$(cd "$2" 2>/dev/null && pwd || echo "$2"); shift 2 ;;
    --no-install) install=0; shift ;;
    --no-build) compile=0; shift ;;
    --small) args+=(--ranks 2 --hidden 64 --chunks 8 --steps 2 --warmup 1); shift ;;
    *) args+=("$1"); shift ;;
  esac
done

venv="$build/peers-venv"
python="${DUALPIPE_PEERS_PYTHON:-$venv/bin/python}"
has_torch() { [ -x "$1" ] && "$1" -c "import torch, torch.distributed.pipelining" >/dev/null 2>&1; }
if ! has_torch "$python"; then
  if ((!install)); then
    echo "peers: skipped: no Python with PyTorch ($python); bash bench/peers/run.sh installs it into $venv," \
         "or set DUALPIPE_PEERS_PYTHON"
    exit 77
  fi
  echo "peers: installing PyTorch into $venv (pip; a large download)" >&2
  mkdir -p "$build"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086  # PEERS_PIP_ARGS is a list of options
  "$venv/bin/pip" install --quiet ${PEERS_PIP_ARGS:-} torch numpy  # numpy: gloo sends Python objects through it
  python="$venv/bin/python"
  has_torch "$python" || { echo "peers: PyTorch did not install into $venv" >&2; exit 1; }
fi

if ((compile)); then
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >&2
  fi
  cmake --build "$build" --target dualpipe-peers -j"$(nproc)" >&2
fi
peers="$build/bin/dualpipe-peers"
[ -x "$peers" ] || { echo "peers: $peers is missing (libtorch not found at configure time?)" >&2; exit 1; }

# Our MPI rows, when MPI is there: the flags the project's MPI tests use (root, oversubscription, no CMA).
mpi=()
if command -v mpirun >/dev/null 2>&1 && ! printf '%s\n' "${args[@]}" | grep -q -- '^--mpiexec$'; then
  flags="--oversubscribe --mca btl_vader_single_copy_mechanism none"
  [ "$(id -u)" -eq 0 ] && flags="$flags --allow-run-as-root"
  mpi=(--mpiexec "$(command -v mpirun)" --mpiexec-flags "$flags")
fi
exec "$python" "$repo/bench/peers/peers.py" --peers-bin "$peers" "${mpi[@]}" "${args[@]}"
