"""Linear probes of frozen encoders (``benchmarks/probe.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..suite_jobs import ROOT
from .format import fmt, pct, rel, signed


PROBE_FEATURES = (("layer0", "input states"), ("layer1", "after layer 1"), ("layer2", "after layer 2"),
                  ("layer3", "after layer 3"), ("pooled", "output (what the head reads)"),
                  ("all_layers", "all layers concatenated"))


# the probe features the analysis sets against a random encoder
PROBE_SUMMARIES = (("pooled", "pooled output"), ("all_layers", "all layers side by side"))


def section_probe(path: Path) -> list[str]:
    """Linear probes of frozen encoders (``benchmarks/probe.py``): where pre-training keeps or loses
    what a property needs."""
    out = ["## What the pre-trained encoder holds: linear probes (issue 4)", ""]
    if not path.is_file():
        return out + [f"*No probe results yet* (`python benchmarks/probe.py`, writes `{rel(path, ROOT)}`).", ""]
    probe = json.loads(path.read_text())
    encoders = probe["encoders"]
    targets = list(next(iter(encoders.values()))["probes"])
    out += [f"Ridge regression (penalty chosen on a held-out fifth) on mean-pooled atom states of a *frozen* encoder at "
            f"`t = 0`, fitted on the first {probe['train_count']} `mp2018/train` crystals and scored on the "
            f"{probe['val_count']} of `mp2018/val`: validation MAE. Command: `{probe['command']}`.", ""]
    for target in targets:
        names = [n for n in encoders if target in encoders[n]["probes"]]
        features = [(key, label) for key, label in PROBE_FEATURES
                    if any(key in encoders[n]["probes"][target] for n in names)]
        out += [f"**{target}**", "", "| features | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key, label in features:
            row = [encoders[n]["probes"][target].get(key, {}).get("mae", math.nan) for n in names]
            best = min(v for v in row if math.isfinite(v))
            out.append(f"| {label} | " + " | ".join("–" if not math.isfinite(v) else f"**{fmt(v)}**" if v == best else fmt(v)
                                                    for v in row) + " |")
        if any(len(encoders[n]["probes"][target]) < len(encoders[names[0]]["probes"][target]) for n in names):
            out += ["", "Per-layer states are read from the equivariant encoder only (`CrysDiffEncoder(..., "
                        "all_layers=True)`); the cartesian encoder has its output row alone."]
        out.append("")
    pools = [n for n in encoders if n == "pool" or n.startswith("pool_")]  # the pool model and its continuations
    if pools and "random" in encoders:
        lines = []
        for target in targets:
            rand = encoders["random"]["probes"][target]
            for name in pools:
                pool = encoders[name]["probes"][target]
                which = "pre-trained" if name == "pool" else f"pre-trained ({name})"
                for key, what in PROBE_SUMMARIES:
                    if key in pool and key in rand:
                        mine, floor = pool[key]["mae"], rand[key]["mae"]
                        lines.append(f"{target}: {what}, {which} {fmt(mine)} vs. random {fmt(floor)} "
                                     f"({signed(pct(mine, floor))})")
                depth = [pool[k]["mae"] for k in ("layer0", "layer1", "layer2", "layer3", "pooled") if k in pool]
                if len(depth) > 2:
                    trend = "rises" if all(b >= a for a, b in zip(depth, depth[1:])) else "does not rise steadily"
                    lines.append(f"{target}: through the {which} layers the probe error {trend} "
                                 f"({' → '.join(fmt(v) for v in depth)})")
            randoms = [n for n in encoders if n == "random" or n.startswith("random_")]
            if len(randoms) > 1:  # how far one random initialisation is from another
                for key, what in PROBE_SUMMARIES:
                    values = [encoders[n]["probes"][target][key]["mae"] for n in randoms
                              if key in encoders[n]["probes"][target]]
                    if len(values) > 1:
                        lines.append(f"{target}: {what} of {len(values)} random initialisations "
                                     f"{fmt(min(values))} to {fmt(max(values))} (the lines above compare with `random`)")
        out += ["**Analysis** (computed):", ""] + [f"* {line}." for line in lines] + [""]
    return out
