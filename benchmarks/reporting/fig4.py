"""Fig. 4: test MAE against the share of training labels, and the seed ensembles of the sparse runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..suite_jobs import FRACTIONS_SPARSE, TASKS
from .aggregate import footing, matched_seeds, models_of, runs_of, tasks_of
from .columns import PAPER_COLUMN, crysdiff_heads, shown_models
from .figures import fig_sparse
from .format import MIXED, budget_check, fmt, fmt_cell, median, model_label, pct, rel, signed


def section_sparse(cells, figures: Path, out_dir: Path) -> list[str]:
    out = ["## Fig. 4: sparse labels", ""]
    tasks = tasks_of(cells, "sparse")
    if not tasks:
        return out + ["*No sparse results yet* (`python benchmarks/suite.py --part sparse`).", ""]
    models = models_of(cells, "sparse", shown_models("sparse"))
    matched = matched_seeds(cells, "sparse")
    extra = sorted({seed for key, cell in cells.items() if key[0] == "sparse" for seed in cell.seeds}
                   - {seed for key, cell in matched.items() if key[0] == "sparse" for seed in cell.seeds})
    cells = matched
    if fig_sparse(cells, tasks, models, figures / "fig4_sparse.png"):
        out += [f"![test MAE against label fraction]({rel(figures / 'fig4_sparse.png', out_dir)})", ""]
    out += ["| task | model | " + " | ".join(f"{100 * f:g}%" for f in FRACTIONS_SPARSE) + " |",
            "|---|---|" + "---|" * len(FRACTIONS_SPARSE)]
    fair = {(t, f): footing(runs_of(*(cells.get(("sparse", t, m, f)) for m in models)))
            for t in tasks for f in FRACTIONS_SPARSE if any(("sparse", t, m, f) in cells for m in models)}
    for task in tasks:
        for model in models:
            if not any(("sparse", task, model, f) in cells for f in FRACTIONS_SPARSE):
                continue  # a column not run on this task (e.g. `--tasks` left it out)
            out.append(f"| {TASKS[task].label} | {model_label(model)} | "
                       + " | ".join(fmt_cell(cells.get(("sparse", task, model, f)))
                                    + ("" if fair.get((task, f), True) else f" {MIXED}") for f in FRACTIONS_SPARSE) + " |")
    if extra:
        out += ["", f"Each cell averages the seeds that every model at that fraction has; seeds that only some models have "
                    f"({', '.join(map(str, extra))}) are left out here and used by the ensemble analysis below."]
    out += ["", budget_check(list(fair.values()), "task-and-fraction columns (every model in them)"), "",
            "**Analysis** (computed):", ""]
    return out + _analysis(cells, tasks, models, fair) + [""]


def _analysis(cells, tasks, models, fair) -> list[str]:
    """Each head against its twin, and against each peer, over the task-and-fraction columns on one footing."""
    out = []
    heads = [(own, twin, what) for own, twin, what in crysdiff_heads("sparse") if own in models]
    peers = [m for m in models if m not in {name for pair in crysdiff_heads("sparse") for name in pair[:2]}]
    for task in tasks:
        by_model = {m: {f: cells[("sparse", task, m, f)] for f in FRACTIONS_SPARSE
                        if ("sparse", task, m, f) in cells and fair[(task, f)]} for m in models}
        for own, twin, what in heads:
            ours = by_model.get(own, {})
            pairs = [(f, ours[f].mae, cell.mae) for f, cell in by_model.get(twin, {}).items() if f in ours]
            if not pairs:
                continue
            low = [(f, a, b) for f, a, b in pairs if f <= 0.4]
            high = [(f, a, b) for f, a, b in pairs if f > 0.4]
            label = "" if own == PAPER_COLUMN else f" ({what})"
            out.append(f"* {TASKS[task].label}{label}: pre-trained beats scratch at {sum(a < b for _, a, b in low)} of "
                       f"{len(low)} fractions up to 40% (issue 5 target: all) and at {sum(a < b for _, a, b in pairs)} of "
                       f"{len(pairs)} in all; median change {fmt(median(pct(a, b) for _, a, b in low), 2)}% up to 40%, "
                       f"{fmt(median(pct(a, b) for _, a, b in high), 2) if high else '–'}% above.")
            for peer in peers:
                versus = [(f, ours[f].mae, cell.mae) for f, cell in by_model[peer].items() if f in ours]
                if versus:
                    out.append(f"  * against {model_label(peer)}: crysdiff{label} is better at "
                               f"{sum(a < b for _, a, b in versus)} of {len(versus)} fractions (changes: "
                               f"{', '.join(f'{100 * f:g}% {signed(pct(a, b))}' for f, a, b in versus)}).")
            coverage = [(f, cell.coverage) for f, cell in ours.items()]
            if coverage:
                out.append(f"  * crysdiff{label}'s 95% interval coverage (the chain's own), by fraction: "
                           + ", ".join(f"{100 * f:g}% {fmt(c)}" for f, c in coverage) + "."
                           + (" Where it is below 0.90: the interval is the spread of p(y | structure) "
                              "as fitted to the training labels and has no term for the model's own uncertainty, so a "
                              "small label set seen for many epochs gives intervals too narrow for new crystals; the "
                              "calibrated intervals that `crysdiff predict` reports are in the calibration section."
                              if any(c < 0.90 for _, c in coverage) else ""))
            steps = [(f, r["fit"]["steps"], r["fit"].get("epochs")) for f, cell in ours.items()
                     for r in cell.results[:1] if r.get("fit", {}).get("steps")]
            if steps:
                out.append(f"  * crysdiff{label}'s optimizer steps (epochs started) within the budget, by fraction: "
                           + ", ".join(f"{100 * f:g}% {n} ({e})" for f, n, e in steps)
                           + ": at a fixed wall-clock budget a smaller label set is seen more often, not trained for longer.")
    return out


def section_ensemble(results: Path) -> list[str]:
    """The seed ensembles of ``benchmarks/ensemble.py``: one model's interval against the pooled one."""
    files = sorted((results / "ensemble").glob("*.json"))
    if not files:
        return []
    out = ["### Few labels: one model's interval against a seed ensemble", "",
           "The same sparse-label crysdiff runs, differing only in `--seed`, predicted alone and pooled as one ensemble "
           "(`crysdiff predict --model A --model B ...`: S samples from each). *Single* is the mean over the seeds of "
           "each model alone; *std between models* is the spread of the members' means, the epistemic part that a single "
           "model's interval lacks. *Ensemble* pools the members' samples with the small-ensemble correction that "
           "`crysdiff predict` applies (`pool_members`: the members' means moved apart so that the variance is "
           "`W + (1 + 1/M) B`); *as drawn* pools them unchanged.", "",
           "| task | labels | test | single: MAE | single: 95% coverage | single: mean std | ensemble: MAE | "
           "ensemble: 95% coverage | ensemble: mean std | as drawn: 95% coverage | std between models |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for path in files:
        report = json.loads(path.read_text())
        label = TASKS[report["task"]].label if report["task"] in TASKS else report["task"]
        for row in report["rows"]:
            members, ensemble = row["members"], row["ensemble"]
            as_drawn = row.get("ensemble_as_drawn")
            single = {key: float(np.mean([m[key] for m in members])) for key in ("mae", "coverage95", "mean_predicted_std")}
            out.append(f"| {label} | {100 * row['label_fraction']:g}% ({row['train_count']}) | {row['test_count']} | "
                       f"{fmt(single['mae'])} | {fmt(single['coverage95'])} | {fmt(single['mean_predicted_std'])} | "
                       f"{fmt(ensemble['mae'])} | {fmt(ensemble['coverage95'])} | {fmt(ensemble['mean_predicted_std'])} | "
                       f"{fmt(as_drawn['coverage95']) if as_drawn else '–'} | {fmt(ensemble['std_models'])} |")
            notes.append((label, row["label_fraction"], single, ensemble, as_drawn, len(members)))
        out += ["", f"Seeds {', '.join(map(str, report['seeds']))}, {report['samples_per_model']} samples per crystal "
                    f"and model; `{report['command']}` at commit `{report['git_commit'][:10]}`.", ""]
    if notes:
        out += ["**Analysis** (computed):", ""]
        for label, fraction, single, ensemble, as_drawn, count in notes:
            drawn = f" ({fmt(as_drawn['coverage95'])} pooled as drawn)" if as_drawn else ""
            out.append(f"* {label}, {100 * fraction:g}%: coverage {fmt(single['coverage95'])} alone, "
                       f"{fmt(ensemble['coverage95'])} with {count} models{drawn} "
                       f"({'inside' if 0.90 <= ensemble['coverage95'] <= 0.98 else 'outside'} [0.90, 0.98]); MAE "
                       f"{signed(pct(ensemble['mae'], single['mae']))} against the mean single model.")
        out.append("")
    return out
