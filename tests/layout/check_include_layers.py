#!/usr/bin/env python3
"""Fails when a header of include/dualpipe/ includes a folder above its own.

The layer order is written once, in the ```layers block of docs/architecture.md: one line per layer, top
first; the folders of a line may include their own folder and every folder on a lower line. Top-level
headers (the umbrellas) are above every folder, and no header inside a folder may include one.

  check_include_layers.py --root REPO        check the repository (exit 1 and one line per violation)
  check_include_layers.py --self-test        show that the check fails on an upward, a sideways and an
                                             umbrella include, and on a folder missing from the block
"""
import argparse
import os
import re
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s*["<]dualpipe/([^">]+)[">]')


def read_layers(architecture_md):
    text = open(architecture_md, encoding="utf-8").read()
    block = re.search(r"^```layers\n(.*?)^```", text, re.S | re.M)
    if not block:
        raise SystemExit(f"{architecture_md}: no ```layers block")
    lines = [line.split() for line in block.group(1).splitlines() if line.strip()]
    level = {}
    for height, folders in enumerate(reversed(lines)):
        for folder in folders:
            if folder in level:
                raise SystemExit(f"{architecture_md}: folder {folder} is on two lines of the layers block")
            level[folder] = height
    return level


def violations(include_root, level):
    """Yields one message per include that breaks the order."""
    for directory, _, files in sorted(os.walk(include_root)):
        for name in sorted(files):
            if not name.endswith((".hpp", ".h", ".cuh")):
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, include_root).replace(os.sep, "/")
            parts = rel.split("/")
            if len(parts) == 1:
                continue  # an umbrella header: above every folder
            folder = parts[0]
            if folder not in level:
                yield f"{rel}: folder '{folder}/' is not in the layers block of docs/architecture.md"
                continue
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    target = m.group(1)
                    target_parts = target.split("/")
                    if len(target_parts) == 1:
                        yield (f"{rel}:{number}: includes the umbrella header dualpipe/{target}: "
                               f"a header inside a folder includes the headers it uses")
                        continue
                    to = target_parts[0]
                    if to == folder:
                        continue
                    if to not in level:
                        yield f"{rel}:{number}: includes dualpipe/{target}, of a folder not in the layers block"
                    elif level[to] > level[folder]:
                        yield (f"{rel}:{number}: includes dualpipe/{target}: {to}/ is above {folder}/ "
                               f"in docs/architecture.md")
                    elif level[to] == level[folder]:
                        yield (f"{rel}:{number}: includes dualpipe/{target}: {to}/ and {folder}/ are on "
                               f"the same line of docs/architecture.md and must not include each other")


def check(root):
    level = read_layers(os.path.join(root, "docs", "architecture.md"))
    found = list(violations(os.path.join(root, "include", "dualpipe"), level))
    for message in found:
        print(f"include_layers: {message}")
    return found


def self_test():
    """Builds small trees that break the rule in each way and checks that every one is reported."""
    cases = {
        "upward": ("core/op.hpp", '#include "dualpipe/runtime/stage.hpp"\n', "runtime/ is above core/"),
        "sideways": ("mpi/x.hpp", '#include "dualpipe/cuda/stream.hpp"\n', "same line"),
        "umbrella": ("comm/x.hpp", '#include "dualpipe/dualpipe.hpp"\n', "umbrella header"),
        "unknown folder": ("extra/x.hpp", "", "folder 'extra/' is not in the layers block"),
    }
    architecture = "```layers\nnccl\nmpi cuda torch\nruntime\ncomm\nanalysis\nschedule\ncore\n```\n"
    failures = 0
    for name, (header, body, expected) in cases.items():
        with tempfile.TemporaryDirectory() as root:
            os.makedirs(os.path.join(root, "docs"))
            open(os.path.join(root, "docs", "architecture.md"), "w").write(architecture)
            path = os.path.join(root, "include", "dualpipe", header)
            os.makedirs(os.path.dirname(path))
            open(path, "w").write("#pragma once\n" + body)
            # A downward include beside it must stay allowed.
            ok = os.path.join(root, "include", "dualpipe", "runtime", "ok.hpp")
            os.makedirs(os.path.dirname(ok), exist_ok=True)
            open(ok, "w").write('#include "dualpipe/core/op.hpp"\n#include "dualpipe/comm/c.hpp"\n')
            found = check(root)
            if len(found) != 1 or expected not in found[0] or header not in found[0]:
                print(f"self-test '{name}': expected one violation naming {header} and '{expected}', got {found}")
                failures += 1
    print("self-test: " + ("FAILED" if failures else f"all {len(cases)} violations reported"))
    return failures == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="repository root (with docs/architecture.md and include/dualpipe)")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        return 0 if self_test() else 1
    if not args.root:
        parser.error("--root or --self-test")
    found = check(args.root)
    if not found:
        print("include_layers: every header includes only its own folder and the folders below it")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
