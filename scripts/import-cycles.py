#!/usr/bin/env python3
"""Fails when files under src/ import each other in a cycle (issue 15: no import cycles).

Follows `use crate::…`, `use super::…`, `use self::…`, paths written in code
(`crate::a::b::f()`), and a module's `use child::…` of its own children, to the file
that defines the longest matching module path. A child using its ancestors (`super::T`
for a type of the parent) is not counted: a parent declaring its children is Rust's
module tree, not a dependency. Comments and `#[cfg(test)] mod tests` are skipped.

Usage: scripts/import-cycles.py [SRC_DIR]   (default: src/ beside this script)
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
mods = {}
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, root)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib", "main"):
            rel = rel[:-1]
        mods[tuple(rel)] = open(path, encoding="utf-8").read()


def resolve(cur, path):
    parts = path.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    elif parts[0] == "super":
        base = list(cur)
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    elif parts[0] == "self":
        base, parts = list(cur), parts[1:]
    else:
        return None
    best = None
    for i in range(len(parts) + 1):
        if tuple(base + parts[:i]) in mods:
            best = tuple(base + parts[:i])
    return best


edges = {}
for m, src in mods.items():
    src = re.split(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod tests", src)[0]
    src = "\n".join(line for line in src.split("\n") if not line.strip().startswith("//"))
    deps = set()
    for child in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+(\w+)::", src, re.M):
        if m + (child,) in mods:
            deps.add(m + (child,))
    for used in re.findall(r"(?:use\s+|[^\w:])((?:crate|super|self)(?:::\w+)+)", src):
        target = resolve(m, used)
        if target and target != m and target != m[: len(target)]:
            deps.add(target)
    edges[m] = deps

# Tarjan's strongly connected components.
index, low, stack, on_stack, cycles = {}, {}, [], set(), []
counter = [0]
sys.setrecursionlimit(10000)


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
                break
        if len(component) > 1:
            cycles.append(component)


for v in list(edges):
    if v not in index:
        visit(v)

name = lambda m: "::".join(m) or "crate"
for component in cycles:
    print("import cycle: " + " <-> ".join(sorted(map(name, component))))
    for a in sorted(component):
        for b in sorted(edges[a]):
            if b in component:
                print(f"    {name(a)} -> {name(b)}")
if cycles:
    sys.exit(1)
print(f"import-cycles: {len(mods)} modules, no cycles")
