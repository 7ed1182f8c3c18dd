#!/usr/bin/env python3
"""The crate's module graph: which file imports which, the circles among files, and the
imports that run up the layers `src/lib.rs` declares.

Usage: python3 scripts/modgraph.py [--rooms] [--strict]
  --rooms   print the room-to-room arrows (top-level modules)
  --strict  exit 1 if there is a circle or an arrow running up (tests/layers.rs runs this)

A file's module is its path (src/storage/catalog.rs -> storage::catalog). Its arrows are
the `crate::`, `super::` and `self::` paths it names outside `#[cfg(test)]` code, each
resolved to the longest module that exists. The layer order is the `pub mod` order of
src/lib.rs (groups of `pub mod`, bottom first): a room may use rooms of the layers below
its own, never its own layer's or those above."""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(rel):
    parts = rel[:-3].split("/")
    if parts == ["lib"]:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text):
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    if m:
        text = text[: m.start()]
    text = re.sub(r"//[^\n]*", "", text)
    return text


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]"""
    tree = tree.strip()
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix = tree[:i]
                inner = tree[i + 1 : tree.rindex("}")]
                out, part, d = [], "", 0
                for c in inner:
                    if c == "," and d == 0:
                        out.append(part)
                        part = ""
                        continue
                    d += c == "{"
                    d -= c == "}"
                    part += c
                out.append(part)
                return [p for o in out if o.strip() for p in expand(prefix + o.strip())]
            depth += 1
    return [re.sub(r"\s+as\s+\w+$", "", tree)]


def paths_in(text):
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        found.extend(expand(m.group(1)))
    for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", text):
        found.append(m.group(1))
    return found


def resolve(me, is_dir_mod, path, modules):
    parts = [p for p in path.replace(" ", "").split("::") if p]
    if not parts:
        return None
    if parts[0] == "crate":
        base = ()
        parts = parts[1:]
    elif parts[0] in ("super", "self"):
        base = me
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    else:
        return None
    full = base + tuple(parts)
    for n in range(len(full), -1, -1):
        if full[:n] in modules:
            return full[:n]
    return None


def graph():
    modules, texts = set(), {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".rs") and f != "main.rs":
                rel = os.path.relpath(os.path.join(root, f), SRC)
                m = module_of(rel)
                modules.add(m)
                texts[m] = strip_tests(open(os.path.join(root, f)).read())
    edges = {m: set() for m in modules}
    for m, text in texts.items():
        for p in paths_in(text):
            t = resolve(m, False, p, modules)
            if t is None or t == m or t == ():
                continue
            # a parent naming its own children is how Rust composes a module
            if t[: len(m)] == m and len(m) > 0:
                continue
            edges[m].add(t)
    return modules, edges


def circles(modules, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def layers():
    """Each room's layer: `src/lib.rs` declares its rooms in groups, bottom layer first, one
    comment line before each group (rustfmt sorts a group, never across them)."""
    rank, layer = {}, 0
    for line in open(os.path.join(SRC, "lib.rs")):
        if line.startswith("//") and not line.startswith("//!"):
            layer += 1
        m = re.match(r"pub mod (\w+);", line)
        if m:
            rank[m.group(1)] = layer
    return rank


def main():
    modules, edges = graph()
    rank = layers()
    order = sorted(rank, key=lambda r: (rank[r], r))
    name = lambda m: "::".join(m)
    bad = 0
    file_circles = [c for c in circles(modules, edges)]
    print(f"{len(modules)} files, {len(order)} rooms")
    print(f"{len(file_circles)} circles among files")
    for c in file_circles:
        print("  circle:", " <-> ".join(name(x) for x in c))
        bad += 1
    up = []
    room_edges = {}
    for m, ts in edges.items():
        for t in ts:
            a, b = m[0], t[0]
            if a == b:
                continue
            room_edges.setdefault(a, set()).add(b)
            # rooms of one layer do not use each other either
            if rank.get(b, -1) >= rank.get(a, -1):
                up.append((name(m), name(t)))
    print(f"{len(up)} arrows running up the layers of src/lib.rs")
    for a, b in sorted(up):
        print(f"  up: {a} -> {b}")
        bad += 1
    if "--rooms" in sys.argv:
        for r in order:
            print(f"  {r} -> {', '.join(sorted(room_edges.get(r, ())))}")
    if "--strict" in sys.argv and bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
