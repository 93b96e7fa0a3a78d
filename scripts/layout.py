#!/usr/bin/env python3
"""Checks the crate's layout: no import cycle among the modules of src/ (each file a node; an
edge for every `crate::`, `super::`, `self::` or child-module path, test modules included), and
every folder (stage) importing only the stages below it in LAYERS (test modules excepted: a test
may drive its module from above, e.g. a sandbox).

Usage: scripts/layout.py [--edges] [SRC]   (exit 1 with the offending paths on a violation)
"""
import collections
import os
import re
import sys

# Top to bottom: a module may import only from its own stage and the ones below it.
LAYERS = [
    {"run", "client", "sandbox"},  # start-up of each command; the client; the simulated Dds API
    {"server"},  # listener, connections, ageing, reload, shutdown
    {"api"},  # gate, auth, policy, the gRPC service, JSON over HTTP, API errors
    {"upgrade"},  # validation, idempotency, preflight, the upgrade, status, their errors
    {"state"},  # the store's contract, memory and Redis stores
    {"alibaba"},  # signing, credentials, the Dds client, retries, the answers' classification
    {"telemetry"},  # traces, metrics, logs
    {"limits", "audit", "tls", "deadline", "backoff", "exit"},  # primitives every stage may use
    {"config"},  # a leaf
    {"secret"},
]


def modules(root):
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                continue
            found["::".join(parts)] = path
    return found


def code_of(path):
    """A file's code without comments: (outside test modules, inside them)."""
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = "\n".join(re.sub(r"//.*", "", line) for line in text.split("\n"))
    parts = re.split(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s", text)
    tests = "\n".join(parts[1:])
    # In `mod tests`, `super` is the file's own module.
    tests = re.sub(r"\bsuper::(super::)?", lambda m: "super::" if m.group(1) else "self::", tests)
    return parts[0], tests


def use_paths(code):
    paths = []
    for match in re.finditer(r"\buse\s+([^;]+);", code, re.S):
        stack = [match.group(1).replace("\n", " ")]
        while stack:
            tree = stack.pop().strip()
            brace = tree.find("{")
            if brace < 0:
                paths.append(tree.split(" as ")[0].strip())
                continue
            prefix, body = tree[:brace], tree[brace + 1 : tree.rfind("}")]
            depth, current = 0, ""
            for ch in body + ",":
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                if ch == "," and depth == 0:
                    if current.strip():
                        stack.append(prefix + current.strip())
                    current = ""
                else:
                    current += ch
    return paths


def graph(root):
    mods = modules(root)
    children = collections.defaultdict(set)
    for m in mods:
        if "::" in m:
            parent, child = m.rsplit("::", 1)
            children[parent].add(child)

    def resolve(current, path):
        segs = [s for s in path.split("::") if s]
        if not segs:
            return None
        if segs[0] == "crate":
            base, segs = [], segs[1:]
        elif segs[0] in ("super", "self"):
            base = current.split("::")
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
        elif segs[0] in children.get(current, ()):
            base = current.split("::")
        else:
            return None
        for k in range(len(segs), -1, -1):
            candidate = "::".join(base + segs[:k])
            if candidate in mods:
                return candidate
        return None

    def targets(m, code):
        paths = use_paths(code) + re.findall(r"\b(?:crate|super|self)(?:::\w+)+", code)
        for child in children.get(m, ()):
            paths += re.findall(r"(?<![:\w])" + child + r"(?:::\w+)+", code)
        for p in paths:
            target = resolve(m, p)
            if target and target != m:
                yield target, p

    # `edges`: code outside test modules; `test_edges`: inside them.
    edges = collections.defaultdict(dict)
    test_edges = collections.defaultdict(dict)
    for m, path in mods.items():
        code, tests = code_of(path)
        for target, p in targets(m, code):
            edges[m].setdefault(target, p)
        for target, p in targets(m, tests):
            test_edges[m].setdefault(target, p)
    return mods, edges, test_edges


def cycles(mods, edges):
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(mods):
        if v not in index:
            visit(v)
    return found


def layer_of(module):
    top = module.split("::")[0]
    for depth, stages in enumerate(LAYERS):
        if top in stages:
            return depth
    return None


def violations(mods, edges, test_edges):
    problems = []
    everything = collections.defaultdict(dict)
    for graph_edges in (edges, test_edges):
        for a, targets in graph_edges.items():
            for b, why in targets.items():
                everything[a].setdefault(b, why)
    for m in sorted(mods):
        if layer_of(m) is None:
            problems.append(f"{m}: its stage {m.split('::')[0]!r} is not in LAYERS")
    for c in cycles(mods, everything):
        lines = [f"import cycle: {' '.join(c)}"]
        for a in c:
            for b, why in sorted(everything[a].items()):
                if b in c:
                    lines.append(f"    {a} -> {b}  ({why})")
        problems.append("\n".join(lines))
    for a in sorted(edges):
        for b, why in sorted(edges[a].items()):
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb < la:
                problems.append(f"upward import: {a} -> {b}  ({why})")
    return problems


def main(argv):
    root = next((a for a in argv if not a.startswith("-")), "src")
    mods, edges, test_edges = graph(root)
    if "--edges" in argv:
        for a in sorted(edges):
            print(a, "->", ", ".join(sorted(edges[a])))
    problems = violations(mods, edges, test_edges)
    for problem in problems:
        print(problem)
    print(f"{len(mods)} modules, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
