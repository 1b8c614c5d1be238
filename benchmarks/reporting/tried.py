"""The "Tried and dropped" section: for each option measured and removed (:data:`.dropped.DROPPED`),
what its runs measured beside the same job without it, the commits that measured it and the
commands, so that nobody retries it blind."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..suite_jobs import SHOWN_WITH, TASKS
from .aggregate import footing, read_results
from .dropped import DROPPED, Dropped, dropped_option, init_of, overrides_of, same_settings
from .format import MIXED, budget_check, fmt, median, model_label, pct, signed

SAME_JOB = ("task", "label_fraction", "seed", "budget_minutes")


def _same_job(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in SAME_JOB) and (a.get("budget_steps") or 0) == (b.get("budget_steps") or 0)


def partner(run: dict, kept: list[dict], option: Dropped) -> dict | None:
    """The run of the same job without the option: the same column (an archived run: the option was the
    default then), else the column whose overrides are the run's less the option, from the same start;
    a run of the same part first."""
    if option.archive:
        same = [r for r in kept if _same_job(r, run) and r["model"] == run["model"] and r["experiment"] == run["experiment"]]
    else:
        wanted = tuple(o for o in overrides_of(run) if o != option.option)
        same = [r for r in kept if _same_job(r, run) and same_settings(overrides_of(r), wanted) and init_of(r) == init_of(run)]
    shown = SHOWN_WITH.get(run["experiment"], run["experiment"])
    return min(same, key=lambda r: SHOWN_WITH.get(r["experiment"], r["experiment"]) != shown, default=None)


def _runs(results: Path, option: Dropped, everything: list[dict]) -> list[dict]:
    if option.archive:
        return [json.loads(p.read_text()) for p in sorted((results / "archive" / option.archive).glob("*.json"))]
    return [r for r in everything if dropped_option(r) == option.option]


def _row(run: dict, other: dict | None, fair: str | None) -> str:
    mae, coverage = run["test"]["mae"], run["test"].get("coverage95", math.nan)
    without = other["test"]["mae"] if other else math.nan
    change = signed(pct(mae, without)) + ("" if fair or not other else f" {MIXED}")
    task = TASKS[run["task"]].label if run["task"] in TASKS else run["task"]
    return (f"| {task} | {run.get('model_label') or model_label(run['model'])} | {100 * float(run['label_fraction']):g}% | {run['seed']} | "
            f"{fmt(mae)} | {fmt(without)} | {change} | {fmt(coverage)} | "
            f"{run.get('fit', {}).get('steps', '–')} | `{run.get('git_commit', '')[:7] or '–'}` |")


def _commands(runs: list[dict]) -> list[str]:
    """One suite command per part and seed that made these runs, with its columns."""
    groups: dict[tuple, set] = {}
    for r in runs:
        groups.setdefault((r["experiment"], r["seed"]), set()).add(r["model"])
    return [f"python benchmarks/suite.py --part {part} --seeds {seed} --models {' '.join(sorted(models))}"
            for (part, seed), models in sorted(groups.items())]


def option_lines(results: Path, option: Dropped, everything: list[dict], kept: list[dict]) -> list[str]:
    """The subsection of one removed option."""
    out = [f"### `{option.option}`", "", f"What it did: {option.what}. Commit{'s' * (len(option.commits) > 1)} that "
           f"built or measured it: {', '.join(f'`{c}`' for c in option.commits)} (`git log -S {option.search}`).", ""]
    runs = _runs(results, option, everything)
    if not runs:
        return out + [f"Measured: {option.measured or 'no results file holds it'}.", ""]
    pairs = [(r, partner(r, kept, option)) for r in runs]
    footings = [footing([r, o]) for r, o in pairs if o]
    where = f"`archive/{option.archive}/`" if option.archive else "the results files"
    out += [f"Its runs ({where}), beside the same job (task, labels, seed, budget) without it:", "",
            "| task | column | labels | seed | test MAE | without it | change | coverage | steps | commit |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(_row(r, o, footing([r, o]) if o else None) for r, o in pairs), "",
            budget_check(footings, "rows (each with the run without the option)"), ""]
    fair = [(r["test"]["mae"], o["test"]["mae"]) for r, o in pairs if o and footing([r, o])]
    if fair:
        out += [f"With the option the test MAE is lower on {sum(a < b for a, b in fair)} of {len(fair)} rows "
                f"(median change {signed(median(pct(a, b) for a, b in fair))}).", ""]
    return out + ["Commands (at the commit that measured it):", "", "```bash", *_commands(runs), "```", ""]


def section_tried(results: Path, cells) -> list[str]:
    """Every removed option, with what it measured; ``cells`` are the kept runs (their results)."""
    everything = read_results(results)
    kept = [r for cell in cells.values() for r in cell.results]
    out = ["## Tried and dropped", "",
           "Options built, measured and removed from the code (issue 23). Their rows are left out of the tables "
           "above; their results files stay under the results folder. Numbers are read from those files.", ""]
    for option in DROPPED:
        out += option_lines(results, option, everything, kept)
    return out
