#!/usr/bin/env python3
"""Checks the layering of the daemon's crate by reading its `crate::` paths.

Layers, top down (a module may use its own layer's siblings only where no cycle
results, and any layer below it):

    main, server, http  ->  cri, stream  ->  containerizer  ->  isolators, provisioner, launcher,
                  fetcher (which reads with the provisioner's HTTP client and layer walk)
                  ->  cgroups, state (and the supervisor crate's protocol)  ->  flags, sys

`flags` (plain values; components take their own config from them) and `sys` (the
system calls that need `unsafe`) are the bottom: they use no other module. `quote`,
`inflight`, `failpoint` (test crash points) and `metrics` (the process-wide counters
every layer bumps) are helpers outside the layers. Exits 1 naming each upward use or
same-layer cycle.
"""
import pathlib
import re
import sys

LAYER = {
    "main": 0, "server": 0, "http": 0,
    "cri": 1, "stream": 1,
    "containerizer": 2,
    "isolators": 3, "provisioner": 3, "launcher": 3, "fetcher": 3,
    "cgroups": 4, "state": 4,
    "flags": 5, "sys": 5,
}
HELPERS = {"quote", "inflight", "metrics", "failpoint"}
PATH = re.compile(r"\bcrate::(\w+)")
# `use crate::{a, b::c}` groups name several modules at once.
GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\};", re.S)

src = pathlib.Path(__file__).resolve().parent.parent / "src"
uses = {}  # (from, to) -> first file:line
for path in sorted(src.rglob("*.rs")):
    rel = path.relative_to(src)
    top = rel.parts[0].removesuffix(".rs")
    if top == "lib":
        continue
    text = path.read_text()
    # Unit tests may reach anywhere; they are not part of the layering.
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    found = [(m.group(1), m.start()) for m in PATH.finditer(text)]
    for g in GROUP.finditer(text):
        for name in re.findall(r"(?:^|[{,])\s*(\w+)", g.group(1)):
            found.append((name, g.start()))
    for name, pos in found:
        if name == top or name not in LAYER:
            continue
        line = text.count("\n", 0, pos) + 1
        uses.setdefault((top, name), f"src/{rel}:{line}")

bad = []
for (a, b), where in sorted(uses.items()):
    if a in HELPERS or a not in LAYER:
        continue
    if LAYER[b] < LAYER[a]:
        bad.append(f"{where}: {a} (layer {LAYER[a]}) uses {b} (layer {LAYER[b]}), a higher layer")
    elif LAYER[b] == LAYER[a] and (b, a) in uses:
        bad.append(f"{where}: {a} and {b} use each other (also {uses[(b, a)]})")


def sibling_cycles(root: pathlib.Path) -> list[str]:
    """Pairs of modules of one parent (files of one directory) that use each other: a
    file holds one concept, and two that need each other are one concept or need a third."""
    def module(path: pathlib.Path) -> tuple:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "mod":
            parts.pop()
        return tuple(parts) if parts not in (["lib"], ["main"]) else ()

    files = {module(p): p for p in sorted(root.rglob("*.rs"))}
    uses: dict[tuple, set] = {}
    for mod, path in files.items():
        text = re.split(r"#\[cfg\(test\)\]\s*(?:pub(?:\(crate\))? )?mod tests", path.read_text())[0]
        refs = []
        for kind, rest in re.findall(r"\b(crate|super|self)::((?:\w+::)*\w+)", text):
            refs.append((kind, rest.split("::")))
        for kind, group in re.findall(r"\buse\s+(crate|super|self)::\{([^;]*)\};", text, re.S):
            for name in re.findall(r"(?:^|[{,])\s*(\w+)", group):
                refs.append((kind, [name]))
        targets = set()
        for kind, parts in refs:
            base = [] if kind == "crate" else list(mod) if kind == "self" else list(mod[:-1])
            while parts and parts[0] == "super":
                base, parts = base[:-1], parts[1:]
            full = tuple(base + parts)
            for k in range(len(full), 0, -1):
                if full[:k] in files:
                    targets.add(full[:k])
                    break
        uses[mod] = targets
    out = []
    for a, targets in sorted(uses.items()):
        for b in sorted(targets):
            if a < b and len(a) == len(b) and a[:-1] == b[:-1] and a in uses.get(b, ()):
                out.append(f"{files[a]}: {'::'.join(a)} and {'::'.join(b)} use each other ({files[b]})")
    return out


crates = [src, src.parent / "supervisor" / "src", src.parent / "test-support" / "src"]
for root in crates:
    bad.extend(sibling_cycles(root))
for line in bad:
    print(line)
if bad:
    sys.exit(1)
print("layers: no upward use, no cycle among", ", ".join(sorted(LAYER)),
      "; no two files of a directory use each other")
