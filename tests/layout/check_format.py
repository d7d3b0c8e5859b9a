#!/usr/bin/env python3
"""Fails when a C++ or CUDA source of the repository differs from what clang-format makes of it.

The style is the repository's .clang-format (tuned on clang-format 14; other major versions may format a
few constructs differently). Checked: the sources (.hpp .h .cuh .cpp .cu) under include/, tests/, bench/
and examples/.

  check_format.py [--root REPO] [--clang-format BINARY] [--jobs N]
      one line per offending file, with the number of lines clang-format would change and the first of
      them; exit 1 when any file would change, 0 when none would, 2 when clang-format cannot be run.
      The fix: clang-format -i <files> (the command is printed).
  check_format.py --self-test
      shows that the check fails on a misformatted file and passes once clang-format has formatted it.
"""
import argparse
import concurrent.futures
import difflib
import os
import shutil
import subprocess
import sys
import tempfile

FOLDERS = ("include", "tests", "bench", "examples")
SUFFIXES = (".hpp", ".h", ".cuh", ".cpp", ".cu")


def sources(root):
    for folder in FOLDERS:
        for directory, subdirs, files in os.walk(os.path.join(root, folder)):
            subdirs.sort()
            for name in sorted(files):
                if name.endswith(SUFFIXES):
                    yield os.path.join(directory, name)


def check(clang_format, root, path):
    """(path, None) when the file is formatted, else (path, (changed lines, first changed line))."""
    dry = subprocess.run([clang_format, "--style=file", "--dry-run", "--Werror", path], cwd=root,
                         capture_output=True, text=True)
    if dry.returncode == 0:
        return path, None
    formatted = subprocess.run([clang_format, "--style=file", path], cwd=root, capture_output=True, text=True,
                               check=True).stdout
    with open(path, encoding="utf-8") as f:
        original = f.read()
    changed, first = 0, None
    matcher = difflib.SequenceMatcher(None, original.splitlines(), formatted.splitlines(), autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            continue
        changed += max(a1 - a0, b1 - b0)
        if first is None:
            first = a0 + 1
    if changed == 0:  # clang-format's complaint is about something difflib's lines do not show (line ends)
        changed, first = 1, 1
    return path, (changed, first)


def self_test(binary, repo_root):
    """The check on a scratch repository with the real .clang-format: a misformatted file, then formatted."""
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copy(os.path.join(repo_root, ".clang-format"), scratch)
        os.makedirs(os.path.join(scratch, "include"))
        path = os.path.join(scratch, "include", "bad.hpp")
        with open(path, "w", encoding="utf-8") as f:
            f.write("#pragma once\nint  f(int *p){return *p;}\n")
        bad = [info for _, info in [check(binary, scratch, p) for p in sources(scratch)] if info is not None]
        subprocess.run([binary, "--style=file", "-i", path], cwd=scratch, check=True)
        good = [info for _, info in [check(binary, scratch, p) for p in sources(scratch)] if info is not None]
    if len(bad) != 1 or good:
        print(f"check_format self-test FAILED: misformatted file found {len(bad)} times (want 1), "
              f"{len(good)} offenders after formatting (want 0)", file=sys.stderr)
        return 1
    print("check_format self-test: a misformatted file is reported, the formatted one is not")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    parser.add_argument("--clang-format", default=os.environ.get("CLANG_FORMAT", "clang-format"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    root = os.path.abspath(args.root)

    binary = shutil.which(args.clang_format)
    if binary is None:
        print(f"check_format: {args.clang_format} not found (set --clang-format or CLANG_FORMAT)", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(root, ".clang-format")):
        print(f"check_format: no .clang-format in {root}", file=sys.stderr)
        return 2
    if args.self_test:
        return self_test(binary, root)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()

    paths = list(sources(root))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda p: check(binary, root, p), paths))
    offenders = [(path, info) for path, info in results if info is not None]
    for path, (changed, first) in offenders:
        print(f"{os.path.relpath(path, root)}:{first}: {changed} lines differ from clang-format's")
    if offenders:
        lines = sum(info[0] for _, info in offenders)
        print(f"check_format: {len(offenders)} of {len(paths)} files ({lines} lines) are not formatted ({version}); "
              f"to format them, from {root}:")
        print("clang-format -i " + " ".join(os.path.relpath(p, root) for p, _ in offenders))
        return 1
    print(f"check_format: {len(paths)} files formatted ({version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
