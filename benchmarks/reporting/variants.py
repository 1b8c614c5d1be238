"""The variant table (issue 4): heads, priors and pre-training on mp2018 formation energy."""

from __future__ import annotations

import math

from ..suite_jobs import TASKS
from .aggregate import footing, models_of, runs_of, tasks_of
from .columns import shown_models
from .format import MIXED, budget_check, fmt, fmt_cell, model_label, pct, signed, unit_of


def section_variants(cells) -> list[str]:
    out = ["## Variant table (issue 4): heads, priors, pre-training", ""]
    tasks = tasks_of(cells, "variants")
    if not tasks:
        return out + ["*No variant results yet* (`python benchmarks/suite.py --part variants`).", ""]
    task = tasks[0]
    fractions = sorted({k[3] for k in cells if k[0] == "variants"})
    variants = models_of(cells, "variants", shown_models("variants"))
    out += [f"{TASKS[task].label}, test MAE ({unit_of(cells, task)}) and 95% coverage, at each share of the training labels.", "",
            "| variant | " + " | ".join(f"{100 * f:g}% MAE | {100 * f:g}% coverage" for f in fractions) + " |",
            "|---|" + "---|---|" * len(fractions)]
    # the table's footing: that of most of its runs; a variant run elsewhere is marked and left out of "best"
    kinds = [footing([r]) for key, cell in cells.items() if key[0] == "variants" and key[1] == task for r in cell.results]
    main = max(set(kinds), key=kinds.count)
    fair = {v: footing([*runs_of(*(cells.get(("variants", task, v, f)) for f in fractions)), {"machine": {"cpu": main}}])
            is not None for v in variants}
    best = {f: min((v for v in variants if ("variants", task, v, f) in cells and fair[v]),
                   key=lambda v: cells[("variants", task, v, f)].mae, default=None) for f in fractions}
    for v in variants:
        row = []
        for f in fractions:
            cell = cells.get(("variants", task, v, f))
            row += [fmt_cell(cell, best[f] == v), fmt(cell.coverage) if cell else "–"]
        out.append(f"| {model_label(v)}{'' if fair[v] else ' ' + MIXED} | " + " | ".join(row) + " |")
    out += ["", budget_check([main if fair[v] else None for v in variants], "variant rows (against the table's main "
                             "machine type; a marked row is left out of *best*)"), "", "**Analysis** (computed):", ""]
    for f in fractions:
        def mae(v):
            cell = cells.get(("variants", task, v, f))
            return cell.mae if cell and fair[v] else math.nan

        lines = [f"best: {model_label(best[f])}"] if best[f] else []
        for a, b, what in (("crysdiff", "scratch", "pre-trained vs. scratch (diffusion head)"),
                           ("crysdiff", "eq4", "CARD head vs. literal Eq. 4"),
                           ("crysdiff", "learned_prior", "mean prior vs. learned prior"),
                           ("gaussian", "crysdiff", "Gaussian-parameterised vs. CARD head"),
                           ("regression", "regression_scratch", "regression head: pre-trained vs. random encoder"),
                           ("crysdiff", "regression", "diffusion vs. regression head (pre-trained)"),
                           ("gaussian_learned", "crysdiff", "Gaussian head around a learned prior vs. CARD head"),
                           ("gaussian_learned", "scratch_gaussian_learned",
                            "Gaussian head around a learned prior: pre-trained vs. scratch")):
            if math.isfinite(mae(a)) and math.isfinite(mae(b)):
                lines.append(f"{what}: MAE {signed(pct(mae(a), mae(b)))}")
        out.append(f"* {100 * f:g}% of the labels: " + "; ".join(lines) + ".")
    return out + [""]
