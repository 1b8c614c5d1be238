"""Accuracy and calibrated coverage when a labelled set arrives as conventional cells (issue 20).

    python benchmarks/cell_coverage.py [--models formation_energy_per_atom band_gap] [--samples 100]

Every crystal of mp2018/val is predicted twice through the public API (``Predictor.predict`` on
in-memory structures, the calibrated interval a user gets): in the cell the file holds, and as its
conventional standard cell (spglib ``standardize_cell`` with ``no_idealize``, the form ICSD and COD
files come in; a crystal spglib finds no symmetry for keeps its cell). For each form it reports the
MAE of the predicted mean and the share of labels inside the 95% interval ``[p2.5, p97.5]``, on all
of mp2018/val and on the seeded half that a model fine-tuned with ``holdout_fraction`` kept out of
every choice (the checkpoint's ``config``: the same split as fine-tuning made), and how far the two
forms' means lie apart. Writes ``benchmarks/results/cell_coverage.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
VAL = DATA / "mp2018" / "val.csv.gz"


def held_out_ids(predictor) -> set[str]:
    """The ids of the mp2018/val crystals the model's fine-tuning held out (empty without a holdout)."""
    from crysdiff.cache import load_dataset
    from crysdiff.finetune import split_holdout

    config = predictor.config
    cache = load_dataset([VAL], settings=predictor.validation_settings, cell=predictor.cell, progress=False)
    column = cache.label_names.index(config.target)
    labelled = np.flatnonzero(np.isfinite(np.asarray(cache.labels[:, column])))
    _, held = split_holdout(labelled, config)  # the split fine-tuning made
    return {cache.id(int(i)) for i in held}


def scores(frame, labels: dict) -> dict:
    y = np.array([labels[i] for i in frame["id"]])
    inside = (frame["p2.5"].to_numpy() <= y) & (y <= frame["p97.5"].to_numpy())
    return {"count": int(len(y)), "mae": float(np.mean(np.abs(frame["mean"].to_numpy() - y))),
            "coverage95": float(inside.mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["formation_energy_per_atom", "band_gap"])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cell_coverage.json"))
    args = parser.parse_args()

    import crysdiff
    from crysdiff.cache import load_dataset
    from crysdiff.cells import AS_GIVEN
    from crysdiff.symmetry import conventional_cell

    cache = load_dataset([VAL], cell=AS_GIVEN, progress=False)  # the cells the file holds
    given = [cache.crystal(i) for i in range(len(cache))]
    conventional, kept = [], 0
    for crystal in given:
        try:
            conventional.append(conventional_cell(crystal))
        except ValueError:  # no symmetry found: the file's cell is its own conventional cell
            conventional.append(crystal)
            kept += 1
    results = {"data": str(VAL.relative_to(ROOT.parent)), "count": len(given), "samples": args.samples,
               "atoms_per_crystal": {"given": float(np.mean([c.num_atoms for c in given])),
                                     "conventional": float(np.mean([c.num_atoms for c in conventional]))},
               "conventional_kept_as_given": kept,
               "command": "python benchmarks/cell_coverage.py" + (f" --samples {args.samples}" if args.samples != 100 else ""),
               "models": {}}
    for model in args.models:
        start = time.time()
        predictor = crysdiff.load(model, device="cpu")
        labels = {c.id: c.labels[predictor.target] for c in given if np.isfinite(c.labels.get(predictor.target, np.nan))}
        frames = {name: predictor.predict([c for c in crystals if c.id in labels], samples=args.samples, seed=0)
                  for name, crystals in (("given", given), ("conventional", conventional))}
        held = held_out_ids(predictor)
        entry = results["models"][model] = {"canonical_cells": bool(predictor.cell.canonical),
                                            "held_out_count": len(held)}
        for name, frame in frames.items():
            entry[name] = {"all": scores(frame, labels)}
            if held:
                entry[name]["held_out"] = scores(frame[frame["id"].isin(held)], labels)
        a, b = (frames[n].set_index("id")["mean"] for n in ("given", "conventional"))
        gap = np.abs(a - b.reindex(a.index)).to_numpy()
        entry["mean_difference"] = {"median": float(np.median(gap)), "p90": float(np.quantile(gap, 0.9)),
                                    "max": float(gap.max()),
                                    "largest": {a.index[k]: float(gap[k]) for k in np.argsort(gap)[::-1][:5]}}
        entry["seconds"] = round(time.time() - start, 1)
        print(model, json.dumps(entry), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
