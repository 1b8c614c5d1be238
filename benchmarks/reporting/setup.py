"""The setup section: machines, commits, seeds, splits, budgets and the commands that made the results."""

from __future__ import annotations

import math
from collections import defaultdict

from ..suite_jobs import BASE_REFINE, EXPERIMENTS, TASKS
from .aggregate import CANONICAL_CELLS_COMMIT, cells_seen
from .format import fmt


def section_setup(jobs, pretrain, cells) -> list[str]:
    out = ["## Setup", ""]
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']} "
                       f"({r['machine']['torch_threads']} threads), GPU: {r['machine']['gpu']}" for r in jobs + pretrain})
    commits = sorted({r["git_commit"] for r in jobs + pretrain})
    out += [f"* **Machine**: {'; '.join(machines) or '–'}.", f"* **Git commit(s)** of the runs: {', '.join(f'`{c}`' for c in commits)}."]
    seconds = sum(r.get("seconds", {}).get("total", 0) or sum(v for k, v in r.get("seconds", {}).items() if k != "total")
                  for r in jobs + pretrain if not r.get("reused_from"))
    out.append(f"* **Results files**: {len(jobs)} evaluations and {len(pretrain)} pre-trainings; "
               f"{seconds / 60:.0f} min of measured wall clock (reused jobs counted once).")
    canonical = sorted({r["experiment"] + (f" at {r['budget_steps']} steps" if r.get("budget_steps") else "")
                        for r in jobs if cells_seen(r) == "canonical"})
    given = sum(cells_seen(r) == "as given" for r in jobs)
    out.append(f"* **Cells**: {given} of the {len(jobs)} evaluations were made on the cells as the data files give "
               f"them: every peer column, and every crysdiff run made before commit `{CANONICAL_CELLS_COMMIT}` made "
               f"canonical cells (the Niggli-reduced primitive cell, docs/data.md) the default on 2026-12-01. "
               + (f"Only {len(jobs) - given} crysdiff runs saw canonical cells: {', '.join(f'`{e}`' for e in canonical)} "
                  f"(the step-budget tables say so per row); every other row below predates the change."
                  if canonical else "Every row below predates the change."))
    seeds = {e: sorted({r["seed"] for r in jobs if r["experiment"] == e}) for e in EXPERIMENTS}
    out.append("* **Seeds**: " + "; ".join(f"{e} {', '.join(map(str, s))}" for e, s in seeds.items() if s) + ".")
    out += ["", "Budgets are wall-clock caps on fine-tuning (`train.max_time_minutes`), equal for every model on a task. "
            "Splits are written once by `benchmarks/suite_splits.py` (split seed fixed; model seeds vary initialisation, "
            "data order and the label subset).", "",
            "| task | target (unit) | split | train / val / test crystals | budget (min) |", "|---|---|---|---|---|"]
    for task in TASKS:
        rows = [r for r in jobs if r["task"] == task]
        if not rows:
            continue
        r = rows[0]
        parts = r["split"]["parts"]
        budgets = sorted({x["budget_minutes"] for x in rows if x["budget_minutes"] > 0})
        unit = next((x["unit"] for x in rows if x.get("unit")), "")
        out.append(f"| {TASKS[task].label} | `{r['target']}` ({unit}) | `{r['split']['name']}` | "
                   f"{parts['train']['count']} / {parts['val']['count']} / {parts['test']['count']} | "
                   f"{', '.join(f'{b:g}' for b in budgets)} |")
    dedupe = next((r["split"]["dedupe"] for r in jobs if "dedupe" in r["split"]), None)
    if dedupe:
        out += ["", f"Second source for Table 2: `matminer/flla_2015` ({dedupe['flla_records']} materials) minus those in "
                f"mp2018 by id ({dedupe['in_mp2018_by_id']}) or by structure ({dedupe['in_mp2018_by_structure']}; "
                f"{dedupe['dedupe']}): {dedupe['novel']} materials."]
    if pretrain:
        out += ["", "Pre-trained models for the ablation (same data, model and cap as `models/pretrained_pool.ckpt`):", ""]
        for r in pretrain:
            fit = r.get("fit", {})
            out.append(f"* `{r['checkpoint']}` ({', '.join(r['overrides'])}): {fit.get('steps', '–')} steps, "
                       f"{fit.get('seconds', 0) / 60:.1f} min, validation loss {fmt(r.get('val_loss', {}).get('val/loss', math.nan))}.")
    out += ["", "Commands (each part, then the report):", "", "```bash"]
    quick = " --quick" if any(r.get("quick") for r in jobs + pretrain) else ""
    out += [f"python benchmarks/suite.py{quick} --part pretrain-ablation"]
    out += [f"python benchmarks/suite.py{quick} --part {p}{flags}" for p in EXPERIMENTS for flags in part_flags(jobs, p)]
    out += [f"python benchmarks/report.py{quick}", "```", "", "One command line per model column, as the suite ran it:", "", "```bash"]
    shown = {}
    for r in jobs:
        shown.setdefault(r["model"], r["commands"][0])
    out += [shown[m] for m in sorted(shown)] + ["```", ""]
    return out


def part_flags(jobs: list[dict], part: str) -> list[str]:
    """The ``--seeds`` (and, where a seed ran less than the whole part, ``--models``, ``--fractions``,
    ``--tasks``) the part's results files were made with, and ``--budget-steps N`` for the runs made
    at a step budget: one command per group of seeds that ran the same jobs at the same budget."""
    experiment, done = EXPERIMENTS[part], [r for r in jobs if r["experiment"] == part]
    if not done:
        return []
    full = {"--models": set(experiment.models) | set(experiment.peers), "--fractions": set(experiment.fractions),
            "--tasks": set(experiment.tasks) | ({BASE_REFINE} if part == "refine" else set())}  # refine's own base model
    ran: dict[tuple, dict] = defaultdict(lambda: defaultdict(set))
    for r in done:  # a seed's step-budget runs are another command than its wall-clock ones
        for flag, value in (("--models", r["model"]), ("--fractions", float(r["label_fraction"])), ("--tasks", r["task"])):
            ran[(r.get("budget_steps") or 0, r["seed"])][flag].add(value)
    groups: dict[str, list[int]] = defaultdict(list)
    for (steps, seed), sets in sorted(ran.items()):
        words = [f"{flag} " + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(values))
                 for flag, values in sets.items()
                 if (steps and flag != "--fractions")  # a step-budget command names what it reran
                 or values != full[flag] and not (flag == "--models" and values >= set(experiment.models))]
        groups[" ".join(words + ([f"--budget-steps {steps}"] if steps else []))].append(seed)
    return [f" --seeds {' '.join(map(str, seeds))}" + (f" {words}" if words else "") for words, seeds in groups.items()]
