"""Same crystal, same answer (issue 20): how much the predicted mean moves with the cell a crystal is written in.

    python benchmarks/cell_choice.py [--count 200] [--max-atoms 24] [--samples 20] [--out benchmarks/results/cell_choice.json]

The first ``--count`` crystals of mp2018/val with at most ``--max-atoms`` atoms (so that every
2x2x2 supercell stays a dense graph, like the cells the models were trained on) are written six
ways: as given, primitive standard and conventional standard (spglib ``standardize_cell`` with
``no_idealize``: the atoms keep their positions), 2x1x1, 2x2x2, and the same lattice in the
sheared basis ``[[1,1,0],[0,1,0],[0,0,1]]``. For each bundled model, and for each route:

* ``given``: the model with ``data.cell`` forced off, so the network reads each form's cell as written;
* ``canonical``: the same weights with ``data.cell`` on (every form is reduced to its Niggli-reduced
  primitive cell before the network sees it), which is how the bundled models trained since issue 20
  run as shipped (their checkpoints record ``data.cell``; the earlier ones, trained on cells as given,
  ran the ``given`` route as shipped);

it reports the spread (max - min over the six forms) of the predicted mean, median and 90th
percentile, with the same seed for every form; the sampling-noise floor (the cell as given,
predicted with seed 0 and seed 1: median and 90th percentile of the absolute difference); and the
MAE of the cell-as-given predictions against the mp2018 labels on the same crystals.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHEAR = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def primitive_standard(crystal):
    import spglib

    lattice, frac, z = spglib.standardize_cell((crystal.lattice, crystal.frac_coords, crystal.atomic_numbers),
                                               to_primitive=True, no_idealize=True, symprec=0.01)
    from crysdiff.crystal import wrap_frac

    return replace(crystal, lattice=np.asarray(lattice, float), frac_coords=wrap_frac(np.asarray(frac, float)),
                   atomic_numbers=np.asarray(z, np.int64))


def six_forms(crystal) -> dict:
    from crysdiff.symmetry import change_basis, conventional_cell, supercell

    return {"given": crystal, "primitive standard": primitive_standard(crystal),
            "conventional standard": conventional_cell(crystal), "2x1x1": supercell(crystal, (2, 1, 1)),
            "2x2x2": supercell(crystal, (2, 2, 2)), "sheared basis": change_basis(crystal, SHEAR)}


def with_cell(predictor, cell):
    """The predictor with every member's ``data.cell`` replaced (same weights)."""
    for member in predictor.members:
        member.config = replace(member.config, data=replace(member.config.data, cell=cell))
    return predictor


def quantiles(values: np.ndarray) -> dict:
    return {"median": float(np.median(values)), "p90": float(np.quantile(values, 0.9)), "max": float(values.max())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--max-atoms", type=int, default=24)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["formation_energy_per_atom", "band_gap"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cell_choice.json"))
    args = parser.parse_args()

    import crysdiff
    from crysdiff.cache import load_dataset
    from crysdiff.cells import AS_GIVEN, CellConfig

    cache = load_dataset([DATA / "mp2018" / "val.csv.gz"], progress=False)
    chosen = [i for i in range(len(cache)) if cache.num_atoms[i] <= args.max_atoms][:args.count]
    crystals = [cache.crystal(i) for i in chosen]
    forms = [six_forms(c) for c in crystals]
    names = list(forms[0])
    results = {"count": len(crystals), "max_atoms": args.max_atoms, "samples": args.samples, "forms": names,
               "atoms_per_form": {n: float(np.mean([f[n].num_atoms for f in forms])) for n in names}, "models": {}}
    for model in args.models:
        labels = np.array([c.labels[model] for c in crystals])
        shipped = crysdiff.load(model, device="cpu").cell.canonical
        entry = results["models"][model] = {"shipped_route": "canonical" if shipped else "given"}
        for route, cell in (("given", AS_GIVEN), ("canonical", CellConfig())):
            start = time.time()
            predictor = with_cell(crysdiff.load(model, device="cpu"), cell)
            means = np.stack([predictor.predict([f[n] for f in forms], samples=args.samples, seed=0)["mean"].to_numpy()
                              for n in names], axis=1)  # [B, 6]
            again = predictor.predict([f["given"] for f in forms], samples=args.samples, seed=1)["mean"].to_numpy()
            spread = means.max(axis=1) - means.min(axis=1)
            entry[route] = {
                "spread": quantiles(spread),
                "noise_floor": quantiles(np.abs(again - means[:, 0])),
                "largest_spreads": {crystals[k].id: float(spread[k]) for k in np.argsort(spread)[::-1][:5]},
                "mae_given_form": float(np.mean(np.abs(means[:, 0] - labels))),
                "mae_per_form": {n: float(np.mean(np.abs(means[:, k] - labels))) for k, n in enumerate(names)},
                "seconds": round(time.time() - start, 1),
            }
            print(model, route, json.dumps(entry[route]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
