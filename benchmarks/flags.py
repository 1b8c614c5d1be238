"""How the bundled models' error differs between flagged and unflagged rows (crysdiff.domain).

    python benchmarks/flags.py [--samples 20] [--seed 0]

Two sets: ``mp2018/val`` (formation energy and band gap; the crystals that also picked the bundled
models' checkpoints and fitted their interval scale, so in-distribution by construction) and the
``matminer/flla_2015`` materials whose ``material_id`` is in neither ``mp2018`` split
(formation energy only: flla carries no band gap). For each model and set: how many rows are
flagged, the MAE and the 95% interval coverage of flagged and unflagged rows, and the same per
kind of flag. Writes benchmarks/results/flags.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODELS = ("formation_energy_per_atom", "band_gap")


def _labelled_crystals(path: Path, target: str, settings, exclude: set[str] = frozenset()) -> list:
    from crysdiff.cache import load_dataset

    cache = load_dataset([path], settings=settings, progress=False)
    if target not in cache.label_names:
        return []
    crystals = [cache.crystal(i) for i in range(len(cache))]
    return [c for c in crystals if target in c.labels and c.id not in exclude]


def _score(frame: pd.DataFrame) -> dict:
    error = (frame["mean"] - frame["y"]).abs()
    covered = (frame["p2.5"] <= frame["y"]) & (frame["y"] <= frame["p97.5"])
    return {"count": int(len(frame)), "mae": float(error.mean()) if len(frame) else None,
            "coverage95": float(covered.mean()) if len(frame) else None}


def score_flags(frame: pd.DataFrame) -> dict:
    """Flagged against unflagged rows, and the rows carrying each kind of flag (``kind(...)``)."""
    flagged = frame["flags"] != ""
    kinds = frame["flags"].str.split("; ").explode()
    kinds = kinds[kinds != ""].str.split("(").str[0]
    return {"all": _score(frame), "unflagged": _score(frame[~flagged]), "flagged": _score(frame[flagged]),
            "flagged_fraction": float(flagged.mean()),
            "by_kind": {kind: _score(frame.loc[sorted(set(kinds.index[kinds == kind]))]) for kind in sorted(set(kinds))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flags.json")
    args = parser.parse_args()

    from crysdiff.predict import load

    mp_ids = set()
    for split in ("train", "val"):
        mp_ids |= set(pd.read_csv(DATA / "mp2018" / f"{split}.csv.gz", usecols=["material_id"])["material_id"])
    sets = {"mp2018/val": (DATA / "mp2018" / "val.csv.gz", set()),
            "flla_2015 absent from mp2018": (DATA / "matminer" / "flla_2015.extxyz", mp_ids)}
    results = {}
    for name in MODELS:
        predictor = load(name, device="cpu")
        for set_name, (path, exclude) in sets.items():
            crystals = _labelled_crystals(path, name, predictor.validation_settings, exclude)
            if not crystals:
                continue
            start = time.perf_counter()
            frame = predictor.predict(crystals, samples=args.samples, seed=args.seed)
            frame["y"] = [c.labels[name] for c in crystals]  # in-memory inputs keep their order
            results[f"{name} on {set_name}"] = {"model": name, "data": str(path.relative_to(DATA.parent.parent)),
                                               "unit": predictor.unit, "seconds": time.perf_counter() - start,
                                               **score_flags(frame),
                                               "flagged_rows": frame.loc[frame["flags"] != "", ["id", "flags"]]
                                               .to_dict(orient="records")}
            r = results[f"{name} on {set_name}"]
            print(f"{name} on {set_name}: {r['flagged']['count']} of {r['all']['count']} flagged; MAE flagged "
                  f"{r['flagged']['mae']} vs unflagged {r['unflagged']['mae']} {predictor.unit}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"samples": args.samples, "seed": args.seed,
                                    "command": f"python benchmarks/flags.py --samples {args.samples} --seed {args.seed}",
                                    "results": results}, indent=1))


if __name__ == "__main__":
    main()
