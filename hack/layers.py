#!/usr/bin/env python3
"""Checks the layering of the daemon's crate by reading its `crate::` paths.

Layers, top down (a module may use its own layer's siblings only where no cycle
results, and any layer below it):

    main, server, http  ->  cri, stream  ->  containerizer  ->  isolators, provisioner, launcher,
                  fetcher (which reads with the provisioner's HTTP client and layer walk)
                  ->  cgroups, state (and the supervisor crate's protocol)

`flags`, `quote`, `inflight` and `metrics` (the process-wide counters every layer
bumps) are helpers outside the layers (the cycles through
`flags` are the next issue's). Exits 1 naming each upward use or same-layer cycle.
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
}
HELPERS = {"flags", "quote", "inflight", "metrics"}
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
for line in bad:
    print(line)
if bad:
    sys.exit(1)
print("layers: no upward use, no cycle among", ", ".join(sorted(LAYER)))
