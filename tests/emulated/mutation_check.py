#!/usr/bin/env python3
"""Shows that the emulated GPU tests can fail: each ordering call of the CUDA device policy, of the
CUDA-local communicator and of the NCCL reduction and expert all-to-all is removed in turn, and test_gpu_emulated must then fail (a race found by the
emulator's checker, or a wrong result). A mutation that the tests do not catch is a hole in them.

Works on a copy of the tracked files (the source tree is never touched), in one build folder that it
rebuilds after each mutation (only what includes the mutated header). Exit status: 0 every mutation was
caught, 1 one survived or the unmutated tests failed, 2 a mutation no longer applies (its code was
changed: update MUTATIONS below) or bad arguments.

usage: mutation_check.py [--scratch DIR] [--jobs N] [--only NAME[,NAME...]] [--list] [--applies]
  --applies  only check that every mutation still applies to the code (seconds; a CTest runs it, so that a
             change to the mutated code is caught by the test command, not only by CI's long run)
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

DEVICE = "include/dualpipe/cuda/detail/device_state.hpp"  # the CudaDevice policy's work
LOCAL = "include/dualpipe/cuda/local_communicator.hpp"
REDUCER = "include/dualpipe/nccl/gradient_reducer.hpp"
EXPERT = "include/dualpipe/nccl/expert_comm.hpp"

# name, file, the exact code (must occur once), what replaces it, what the call is for.
# Not here: the communication stream's wait for the origin at a step's start (CudaDeviceState::wait_origin).
# It is defensive: nothing that stream touches in a step (chunk buffers) is written by the origin's work,
# and every transfer already waits for the compute that produced its buffer, so no test can see it go.
MUTATIONS = [
    ("origin-wait-main", DEVICE,
     "    origin_event.record(options.origin);\n    main.wait(origin_event);\n",
     "    origin_event.record(options.origin);\n",
     "a step's main stream waits for the batch's producers"),
    ("slot-wait", DEVICE,
     "      DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(stream_of(lane), s.event.get(), 0));\n      ++slot_waits;\n",
     "      ++slot_waits;\n",
     "a buffer's user waits for its last user on another stream"),
    ("before-commit", DEVICE,
     "    for (long i : pending) use_slot(comm_lane, i);\n",
     "",
     "a transfer waits for the compute that wrote or last read its buffer"),
    ("fork", DEVICE,
     "    second.wait(fork_event);\n    if (timed_op >= 0)",
     "    if (timed_op >= 0)",
     "an FB's second stream starts after the main stream's earlier work"),
    ("join", DEVICE,
     "    main.wait(join_event);\n    end_timed = false;",
     "    end_timed = false;",
     "the main stream continues after the FB's second half"),
    ("timeline-start", DEVICE,
     "      if (timed_op >= 0 && lane != comm_lane)\n",
     "      if (false)\n",
     "a GPU span starts after its op's wait for data (the wait is bubble)"),
    ("local-launch-wait", LOCAL,
     "      if (&a != &b) DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(b.stream(), a._launch.get(), 0));\n",
     "",
     "a copy waits until the sender's buffer is written"),
    ("local-copied-wait", LOCAL,
     "        DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(a.stream(), b._copied.get(), 0));\n",
     "",
     "the sender reuses its buffer only after the copy read it"),
    ("reducer-wait", REDUCER,
     "    if (_waits[m]) StreamRef(_stream_used).wait(_ready[m]);\n",
     "",
     "the device gradient reduction waits for the stream that finished the gradient"),
    ("expert-after-stream", EXPERT,
     "    if (after) wait_on(after);\n",
     "",
     "an all-to-all starts after the stream that wrote its send buffer"),
    ("expert-enqueue-wait", EXPERT,
     "      DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(stream, _done->get(), 0));\n",
     "      (void)stream;\n",
     "a stream that waits for an all-to-all on the device sees its receives"),
    ("expert-pipeline-fence", EXPERT,
     "    if (_options.pipeline_stream) wait_on(_options.pipeline_stream);\n",
     "",
     "the ordering rule: an all-to-all runs after the pipeline's NCCL work issued before it"),
    ("expert-aborts-pipeline", EXPERT,
     "    if (_options.pipeline) _options.pipeline->abort(origin);\n",
     "",
     "a failed all-to-all aborts the pipeline's communicator, so that the step fails at its barrier"),
]


def run(cmd, cwd=None, timeout=None, env=None):
    p = subprocess.run(cmd, cwd=cwd, timeout=timeout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors="replace")
    return p.returncode, p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scratch", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "dualpipe-mutations"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated mutation names")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--applies", action="store_true", help="only check that every mutation applies")
    a = ap.parse_args()
    if a.list:
        for name, f, _, _, why in MUTATIONS:
            print(f"{name:20} {f}: {why}")
        return 0
    chosen = MUTATIONS
    if a.only:
        names = a.only.split(",")
        unknown = [n for n in names if n not in {m[0] for m in MUTATIONS}]
        if unknown:
            print(f"mutation_check: unknown mutation(s) {unknown} (see --list)", file=sys.stderr)
            return 2
        chosen = [m for m in MUTATIONS if m[0] in names]

    # Every mutation must apply to the code as it is now, before anything is built.
    for name, f, old, _, _ in chosen:
        n = open(os.path.join(REPO, f)).read().count(old)
        if n != 1:
            print(f"mutation_check: mutation '{name}' no longer applies: its code occurs {n} times in {f} "
                  f"(update MUTATIONS in {os.path.relpath(__file__, REPO)})", file=sys.stderr)
            return 2

    if a.applies:
        print(f"mutation_check: all {len(chosen)} mutations apply")
        return 0

    src, build = os.path.join(a.scratch, "src"), os.path.join(a.scratch, "build")
    os.makedirs(a.scratch, exist_ok=True)
    rc, files = run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if rc != 0:
        print("mutation_check: git ls-files failed:\n" + files, file=sys.stderr)
        return 1
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(build, ignore_errors=True)  # a build left by an earlier run may hold a mutated object
    for rel in filter(None, files.split("\0")):
        s = os.path.join(REPO, rel)
        if not os.path.isfile(s):
            continue  # a deleted file not yet committed
        d = os.path.join(src, rel)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copyfile(s, d)  # fresh modification times: the build folder is reused only within a run
        shutil.copymode(s, d)

    t0 = time.time()
    rc, out = run(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DDUALPIPE_BUILD_BENCH=OFF",
                   "-DDUALPIPE_BUILD_EXAMPLES=OFF"])
    if rc != 0:
        print(out[-4000:])
        print("mutation_check: configure failed", file=sys.stderr)
        return 1

    env = dict(os.environ, DUALPIPE_EMULATOR_HANG_S="60")
    exe = os.path.join(build, "bin", "test_gpu_emulated")

    def build_and_test(first_failure_ends=False):
        rc, out = run(["cmake", "--build", build, "--target", "test_gpu_emulated", "-j", str(a.jobs)])
        if rc != 0:
            return "build failed", out
        try:
            # A mutation is caught at its first failed check: the rest of the run would only cost CI time.
            rc, out = run([exe] + (["--abort-after=1"] if first_failure_ends else []), env=env, timeout=600)
        except subprocess.TimeoutExpired:
            return "timed out", ""
        races = out.count("cuda emulator: RACE")
        failed = [l for l in out.splitlines() if l.startswith("[doctest] test cases:")]
        return ("passed" if rc == 0 else f"failed (exit {rc}; {races} races reported; {failed[-1][19:].strip() if failed else '?'})"), out

    result, out = build_and_test()
    print(f"unmutated: {result} ({time.time() - t0:.0f} s)", flush=True)
    if result != "passed":
        print(out[-6000:])
        print("mutation_check: the unmutated tests must pass", file=sys.stderr)
        return 1

    survived = []
    for name, f, old, new, why in chosen:
        t = time.time()
        path = os.path.join(src, f)
        original = open(path).read()
        open(path, "w").write(original.replace(old, new, 1))
        try:
            result, out = build_and_test(first_failure_ends=True)
        finally:
            open(path, "w").write(original)
        caught = result != "passed" and result != "build failed"
        print(f"{name:20} {'caught' if caught else 'SURVIVED'}: {result} ({time.time() - t:.0f} s) -- {why}", flush=True)
        if result == "build failed":
            print(out[-3000:])
        if not caught:
            survived.append(name)
    print(f"mutation_check: {len(chosen) - len(survived)} of {len(chosen)} mutations caught in {time.time() - t0:.0f} s")
    if survived:
        print(f"mutation_check: not caught: {', '.join(survived)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
