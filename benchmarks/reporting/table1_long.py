"""Table 1's rows again at a longer wall-clock budget, beside the same seed at Table 1's budget."""

from __future__ import annotations

from ..suite_jobs import TASKS
from .aggregate import footing, seed0, tasks_of
from .columns import crysdiff_heads, shown_models
from .format import budget_check, fmt, model_label, pct, signed, unit_of


def section_long(cells) -> list[str]:
    """Table 1's rows again at the longer budget of the ``table1-long`` part, beside the same seeds at
    Table 1's own budget: does the ranking hold when every model trains longer?"""
    tasks = tasks_of(cells, "table1-long")
    if not tasks:
        return []
    out = ["### The same rows at a longer budget", "",
           "Test MAE of seed 0 at Table 1's budget and at the longer budget of "
           "`python benchmarks/suite.py --part table1-long` and `--part table1-long-gap` (same splits, models and seed; "
           "only the wall-clock cap differs). Optimizer steps in brackets where the run logs them.", ""]
    analysis = []
    for task in tasks:
        models = [m for m in shown_models("table1-long", peers=True) if ("table1-long", task, m, 1.0) in cells]
        long_budget = cells[("table1-long", task, models[0], 1.0)].results[0]["budget_minutes"]

        short = {m: seed0(cells.get(("table1", task, m, 1.0))) for m in models}
        long = {m: seed0(cells.get(("table1-long", task, m, 1.0))) for m in models}
        short_budget = next((r["budget_minutes"] for r in short.values() if r), TASKS[task].budget_minutes)
        out += [f"**{TASKS[task].label}** ({unit_of(cells, task)})", "",
                f"| model | {short_budget:g} min | {long_budget:g} min | change |", "|---|---|---|---|"]

        def shown(r):
            if not r:
                return "–"
            steps = r.get("fit", {}).get("steps")
            return fmt(r["test"]["mae"], 4) + (f" ({steps} steps)" if steps else "")

        for m in models:
            change = signed(pct(long[m]["test"]["mae"], short[m]["test"]["mae"])) if short[m] and long[m] else "–"
            out.append(f"| {model_label(m)} | {shown(short[m])} | {shown(long[m])} | {change} |")
        same = footing([*short.values(), *long.values()])
        out += ["", budget_check([same], "table (every run of it)"), ""]
        for runs, budget in ((short, short_budget), (long, long_budget)):
            done = {m: r["test"]["mae"] for m, r in runs.items() if r}
            if done and same:
                order = sorted(done, key=done.get)
                analysis.append(f"* {TASKS[task].label}, {budget:g} min: ranking "
                                + " < ".join(f"{model_label(m)} {fmt(done[m], 4)}" for m in order)
                                + (f"; the last is {signed(pct(done[order[-1]], done[order[0]]))} behind the first"
                                   if len(order) > 1 else "") + ".")
        for own, twin, what in crysdiff_heads():
            pairs = [(b, runs[own]["test"]["mae"], runs[twin]["test"]["mae"])
                     for b, runs in ((short_budget, short), (long_budget, long))
                     if runs.get(own) and runs.get(twin) and footing([runs[own], runs[twin]])]
            if pairs:
                analysis.append(f"* {TASKS[task].label}, pre-trained vs. from scratch ({what}): "
                                + "; ".join(f"{b:g} min {signed(pct(a, z))}" for b, a, z in pairs) + ".")
    return out + ["**Analysis** (computed):", "", *analysis, ""]


# the longer pre-trainings' models (by length: their checkpoints, their short names), and the columns
