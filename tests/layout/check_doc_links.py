#!/usr/bin/env python3
"""Every relative link (and #anchor) in README.md, docs/ and the examples' and benchmarks' READMEs points at
something that exists. Usage: check_doc_links.py REPO_ROOT; exit 1 and one line per broken link."""
import glob, os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else "."
os.chdir(root)
files = ["README.md"] + glob.glob("docs/**/*.md", recursive=True) + glob.glob("examples/*/README.md") \
    + glob.glob("bench/*/README.md")
def slug(h):
    h = h.strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)   # GitHub: drop punctuation except - and _
    return h.replace(" ", "-")
def anchors(path):
    out, fence = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"): fence = not fence
        if not fence and (m := re.match(r"#+\s+(.*)", line)):
            out.add(slug(m.group(1)))
    return out
bad = 0
for f in files:
    text = open(f, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        target = m.group(1)
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"): continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
        if not os.path.exists(full):
            print(f"{f}: missing file {target}"); bad += 1; continue
        if anchor and full.endswith(".md") and anchor not in anchors(full):
            print(f"{f}: missing anchor {target}"); bad += 1
print(f"{len(files)} files checked, {bad} broken links")
sys.exit(1 if bad else 0)
