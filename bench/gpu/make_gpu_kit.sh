#!/usr/bin/env bash
# bench/gpu/make_gpu_kit.sh: builds, on this machine, the programs a GPU run needs, so that the GPU machine
# (which may lack doctest, Google Benchmark and MPI) only runs them: `bench/gpu/run_gpu_report.sh --prebuilt
# .gpu-kit`. See bench/gpu/README.md.
#
# Writes ${GPU_KIT_DIR:-.gpu-kit}/ (ignored by git):
#   bin/  test_cuda_cpu, test_gpu, dualpipe-cuda-mlp: libstdc++ and libgcc linked statically;
#         dualpipe-bench-gpu: linked against the shared libbenchmark (Debian has no static one), so it uses
#         the kit's own libstdc++ (RPATH $ORIGIN/../lib, not overridden by LD_LIBRARY_PATH).
#         All four link the static CUDA runtime (DUALPIPE_CUDART_STATIC); what they still need from the GPU
#         machine is glibc, the driver (libcuda, loaded by the runtime), libcublas/libcublasLt.so.13 and
#         libnccl.so.2, which run_gpu_report.sh finds there.
#   lib/  libbenchmark and the C++ runtime it was built with (libstdc++, libgcc_s): dualpipe-bench-gpu only.
#   MANIFEST.txt  commit, date, compilers, flags, sizes, NEEDED entries and `ldd` of each program.
# Fails when a program needs a library outside that list, or when the kit exceeds GPU_KIT_MAX_MIB (56).
#
# Environment: CUDA_ARCH (90), GPU_KIT_DIR (.gpu-kit), GPU_KIT_BUILD_DIR (build-gpukit; the benchmark gets
# <dir>-bench), GPU_KIT_JOBS (2), GPU_KIT_MAX_MIB (56).
set -euo pipefail
cd "$(dirname "$0")/../.."

arch=${CUDA_ARCH:-90}
kit=${GPU_KIT_DIR:-.gpu-kit}
build=${GPU_KIT_BUILD_DIR:-build-gpukit}
build_bench=$build-bench
jobs=${GPU_KIT_JOBS:-2}
max_mib=${GPU_KIT_MAX_MIB:-56}

die() { echo "make_gpu_kit.sh: $*" >&2; exit 1; }
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || die "needs nvcc (the CUDA toolkit) on PATH or in /usr/local/cuda/bin"
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH

# Libraries the GPU machine provides (run_gpu_report.sh puts their folders on LD_LIBRARY_PATH), and glibc's.
device_libs='libcublas.so.13 libcublasLt.so.13 libnccl.so.2 libcuda.so.1'
glibc_libs='libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 ld-linux-x86-64.so.2'

# Options both builds share: Release, one architecture, static CUDA runtime, no MPI (the GPU machine has
# none; the example would otherwise find MPI on its own) and no libtorch.
common=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" -DDUALPIPE_ENABLE_CUDA=ON
        -DDUALPIPE_ENABLE_NCCL=ON -DDUALPIPE_CUDART_STATIC=ON -DDUALPIPE_ENABLE_MPI=OFF
        -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON -DDUALPIPE_ENABLE_TORCH=OFF)
# The tests and the example: no RPATH at all (so that nothing of this machine's layout is baked in), and
# the C++ runtime inside the program (the GPU machine's libstdc++ may be older or newer).
static_opts=(-DDUALPIPE_BUILD_BENCH=OFF -DCMAKE_SKIP_RPATH=ON
             "-DCMAKE_EXE_LINKER_FLAGS=-static-libstdc++ -static-libgcc")
# The benchmark: libbenchmark is shared only here, and a program must not mix a static libstdc++ with a
# shared library that uses libstdc++'s own (iostreams, std::string) across the boundary. So it uses the
# shared runtime, carried in the kit and found through RPATH (DT_RPATH: LD_LIBRARY_PATH does not override it).
bench_opts=(-DDUALPIPE_BUILD_TESTS=OFF -DDUALPIPE_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON
            "-DCMAKE_INSTALL_RPATH=\$ORIGIN/../lib" "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags")

configure() {  # configure <dir> <options...>
  local dir=$1; shift
  echo "== configure $dir"
  cmake -S . -B "$dir" "${common[@]}" "$@" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; die "configure of $dir failed"; }
  grep -E '^-- dualpipe: (CUDA|NCCL)' "$dir.configure.log"
  grep -q '^-- dualpipe: NCCL support ON' "$dir.configure.log" || die "NCCL support is OFF in $dir (see $dir.configure.log)"
}
configure "$build" "${static_opts[@]}"
configure "$build_bench" "${bench_opts[@]}"

echo "== build (-j$jobs; nvcc is slow: minutes)"
cmake --build "$build" -j "$jobs" --target test_cuda_cpu test_gpu dualpipe-cuda-mlp
cmake --build "$build_bench" -j "$jobs" --target dualpipe-bench-gpu

echo "== kit: $kit"
rm -rf "$kit"
mkdir -p "$kit/bin" "$kit/lib"
programs=(test_cuda_cpu test_gpu dualpipe-cuda-mlp)
for p in "${programs[@]}"; do cp "$build/bin/$p" "$kit/bin/"; done
cp "$build_bench/bin/dualpipe-bench-gpu" "$kit/bin/"
programs+=(dualpipe-bench-gpu)

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
in_list() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }

# The benchmark's libraries other than glibc's (libbenchmark, libstdc++, libgcc_s): resolved here and copied.
for lib in $(needed "$kit/bin/dualpipe-bench-gpu"); do
  in_list "$lib" "$glibc_libs $device_libs" && continue
  path=$(ldd "$kit/bin/dualpipe-bench-gpu" | awk -v l="$lib" '$1 == l && $2 == "=>" {print $3}')
  { [ -n "$path" ] && [ -f "$path" ]; } || die "dualpipe-bench-gpu needs $lib, which ldd cannot find here"
  cp -L "$path" "$kit/lib/$lib"
done

# Every program and carried library may need only glibc, the GPU machine's CUDA/NCCL libraries and the kit's.
bad=
for f in "$kit"/bin/* "$kit"/lib/*; do
  for lib in $(needed "$f"); do
    in_list "$lib" "$glibc_libs $device_libs" && continue
    [ -f "$kit/lib/$lib" ] && continue
    echo "make_gpu_kit.sh: $f needs $lib: not in the kit, not glibc's, not one the GPU machine provides" >&2
    bad=1
  done
done
[ -z "$bad" ] || die "the kit would not load on the GPU machine (see above)"
# The static programs must not need libstdc++ / libgcc_s / libcudart themselves.
for p in test_cuda_cpu test_gpu dualpipe-cuda-mlp; do
  if needed "$kit/bin/$p" | grep -Eq '^(libstdc\+\+|libgcc_s|libcudart)'; then
    die "$p still needs a shared libstdc++, libgcc_s or libcudart: $(needed "$kit/bin/$p" | tr '\n' ' ')"
  fi
done

# Simulate the GPU machine: only the toolkit's library folder (where libcublas and libnccl are here).
cuda_lib=$(dirname "$(readlink -f "$(command -v nvcc)")")/../lib64
for p in "${programs[@]}"; do
  if env LD_LIBRARY_PATH="$cuda_lib" ldd "$kit/bin/$p" | grep -q 'not found'; then
    env LD_LIBRARY_PATH="$cuda_lib" ldd "$kit/bin/$p" >&2
    die "$p: a library is not found with LD_LIBRARY_PATH=$cuda_lib"
  fi
done

bytes=$(du -sb "$kit" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
if [ "$mib" -gt "$max_mib" ]; then
  du -ab "$kit" | sort -n >&2
  die "the kit is $mib MiB, over the $max_mib MiB limit (the device call carries at most 64 MiB with the tree)"
fi

# The newest glibc symbol version any file of the kit needs: the GPU machine's glibc must be at least that
# (run_gpu_report.sh checks). With g++ 12 on glibc 2.36 the static libstdc++ needs 2.36 (arc4random).
glibc_needed=$(for f in "$kit"/bin/* "$kit"/lib/*; do objdump -T "$f" | grep -o 'GLIBC_[0-9.]*'; done |
               sed 's/GLIBC_//' | sort -Vu | tail -n1)

# ---- MANIFEST.txt ---------------------------------------------------------------------------------------
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=
if git status --porcelain --untracked-files=no 2>/dev/null | grep -q .; then dirty=" (with uncommitted changes)"; fi
cache() { sed -n "s/^$2:[A-Z]*=//p" "$1/CMakeCache.txt" | head -n1; }
{
  echo "dualpipe GPU kit"
  echo "commit: $commit$dirty"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm); $(ldd --version | head -n1)"
  echo "nvcc: $(nvcc --version | sed -n 's/.*release \([0-9.]*\), \(V[0-9.]*\).*/\1 (\2)/p')"
  echo "c++: $(c++ --version | head -n1)"
  echo "cmake: $(cmake --version | head -n1)"
  echo "CUDA architectures: $(cache "$build" CMAKE_CUDA_ARCHITECTURES)"
  grep -E '^-- dualpipe: ' "$build.configure.log" | sed 's/^/support: /'
  echo "configure (all): ${common[*]}"
  echo "configure ($build): ${static_opts[*]}"
  echo "configure ($build_bench): ${bench_opts[*]}"
  echo "CXX flags (Release): $(cache "$build" CMAKE_CXX_FLAGS_RELEASE)"
  echo "CUDA flags (Release): $(cache "$build" CMAKE_CUDA_FLAGS_RELEASE)"
  echo "kit size: $bytes bytes ($mib MiB)"
  echo "glibc needed: $glibc_needed"
  echo
  echo "== sizes"
  (cd "$kit" && find bin lib -type f -printf '%10s  %p\n' | sort -k2)
  echo
  echo "== highest glibc symbol version each file needs"
  for f in "$kit"/bin/* "$kit"/lib/*; do
    echo "$(basename "$f"): $(objdump -T "$f" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n1)"
  done
  for f in "$kit"/bin/*; do
    echo
    echo "== $(basename "$f")"
    echo "NEEDED: $(needed "$f" | tr '\n' ' ')"
    rp=$(readelf -d "$f" | sed -n 's/.*(\(RPATH\|RUNPATH\)).*\[\(.*\)\]/\1 \2/p')
    echo "RPATH: ${rp:-none}"
    echo "ldd (this machine):"
    ldd "$f" | sed 's/ (0x[0-9a-f]*)//; s/^/  /'
  done
} >"$kit/MANIFEST.txt"

echo "kit: $kit ($mib MiB)"
(cd "$kit" && find bin lib -type f -printf '  %10s  %p\n' | sort -k2)
echo "run it on a GPU machine with: bash bench/gpu/run_gpu_report.sh --prebuilt $kit"
