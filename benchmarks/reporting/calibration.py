"""Calibrated intervals (``benchmarks/calibration.py``) and the reliability of the crysdiff rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..suite_jobs import TASKS
from .aggregate import carried_over, tasks_of
from .figures import fig_reliability
from .format import CARRIED, fmt, model_label, rel


def section_calibration(results: Path, calibration: dict) -> list[str]:
    """Raw against calibrated coverage for every crysdiff row of the suite (``benchmarks/calibration.py``)."""
    out = ["## Calibrated intervals", ""]
    path = results / "calibration" / "runs.json"
    if not calibration:
        return out + ["*No calibration results yet* (`python benchmarks/calibration.py`).", ""]
    meta = json.loads(path.read_text())
    out += ["`crysdiff finetune` fits one scale for the spread on its validation crystals (split-conformal: the "
            "smallest scale under which the 95% intervals cover 95% of them) and `crysdiff predict` applies it; "
            "see `docs/method.md`. Mean over seeds of the test coverage, the chain's own interval against the "
            "calibrated one, and the mean scale fitted.", "",
            "| part | task | model | labels | seeds | scale | coverage raw | coverage calibrated |",
            "|---|---|---|---|---|---|---|---|"]
    inside = {"all": [0, 0, 0], "regenerable": [0, 0, 0]}  # cells, raw inside, calibrated inside
    for key in sorted(calibration, key=lambda k: (k[0], k[1], k[2], k[3])):
        rows = calibration[key]
        raw = float(np.mean([r["test_coverage_raw"] for r in rows]))
        cal = float(np.mean([r["test_coverage_calibrated"] for r in rows]))
        carried = sum(carried_over(r) for r in rows)
        for which in ("all", "regenerable") if not carried else ("all",):
            inside[which] = [inside[which][0] + 1, inside[which][1] + (0.90 <= raw <= 0.98),
                             inside[which][2] + (0.90 <= cal <= 0.98)]
        out.append(f"| {key[0]} | {TASKS[key[1]].label if key[1] in TASKS else key[1]} | {model_label(key[2])} | "
                   f"{100 * key[3]:g}% | {len(rows)}{f' ({carried} {CARRIED})' if carried else ''} | "
                   f"{fmt(float(np.mean([r['interval_scale'] for r in rows])))} | {fmt(raw)} | {fmt(cal)} |")
    rows = [r for cell in calibration.values() for r in cell]
    old = sum(carried_over(r) for r in rows)
    (n, raw_in, cal_in), (m, raw_ok, cal_ok) = inside["all"], inside["regenerable"]
    out += ["", f"`{meta['command']}` at commit `{meta['git_commit'][:10]}`"
            + (f"; runs without their folder (not scored): {len(meta['missing_runs'])}" if meta.get("missing_runs") else "")
            + f". {CARRIED}: {old} of {len(rows)} rows are carried over from a pass that recorded no commit, their run "
            "folders gone, so they cannot be regenerated; the other rows record the commit that scored them.",
            "", "**Analysis** (computed):", "",
            f"* Cells with 95% coverage inside [0.90, 0.98], counting only cells whose every row records its commit: "
            f"{raw_ok} of {m} with the chain's own interval, {cal_ok} of {m} calibrated.",
            f"* With the carried-over rows too: {raw_in} of {n} raw, {cal_in} of {n} calibrated.", ""]
    return out


def section_uncertainty(cells, figures: Path, out_dir: Path) -> list[str]:
    out = ["## Uncertainty of the crysdiff rows", ""]
    tasks = tasks_of(cells, "table1")
    if fig_reliability(cells, tasks, figures / "reliability.png"):
        out += ["Test crystals binned by predicted standard deviation (equal-count bins): a calibrated model lies on the "
                "diagonal.", "", f"![reliability]({rel(figures / 'reliability.png', out_dir)})", ""]
    else:
        out += ["*No table1 crysdiff results with intervals yet.*", ""]
    return out
