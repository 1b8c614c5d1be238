"""Reference values for the example structures, beside the bundled models' predictions.

    python examples/make_references.py [--samples 100] [--seed 0]

For each CIF in examples/structures: the same material in ../shared/data/mp2018 (candidates with
the same reduced formula, compared with pymatgen's StructureMatcher at its default tolerances; of
several matches the one with the smallest RMS displacement), with its material id, its split
(train or val: whether the bundled models were fitted on it or only validated on it) and its PBE
formation energy and band gap; the experimental band gap from examples/structures/labels.csv; and
the bundled models' predictions (mean, 95% interval, flags). Every example is listed, matched or
not. Writes examples/references.csv and prints it as the Markdown table the README shows.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "structures"
MP2018 = ROOT.parent / "shared" / "data" / "mp2018"
FORMULA = re.compile(r"_chemical_formula_sum\s+'?([^'\n]+)'?")


def _reduced(formula: str) -> str:
    from pymatgen.core import Composition

    return Composition(formula).reduced_formula


def find_in_mp2018(structures: dict) -> dict:
    """Example name -> the matching mp2018 row (material_id, split, labels, rms), or ``None``."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    wanted = {name: s.composition.reduced_formula for name, s in structures.items()}
    matcher = StructureMatcher()
    found: dict = {name: None for name in structures}
    for split in ("train", "val"):
        table = pd.read_csv(MP2018 / f"{split}.csv.gz")
        formulas = table["cif"].map(lambda cif: _reduced(FORMULA.search(cif).group(1)))
        for name, structure in structures.items():
            for _, row in table[formulas == wanted[name]].iterrows():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    candidate = Structure.from_str(row["cif"], fmt="cif")
                rms = matcher.get_rms_dist(structure, candidate)
                if rms is not None and (found[name] is None or rms[0] < found[name]["rms"]):
                    found[name] = {"mp_id": row["material_id"], "split": split, "rms": float(rms[0]),
                                   "formation_energy_pbe": float(row["formation_energy_per_atom"]),
                                   "band_gap_pbe": float(row["band_gap"])}
    return found


def _cell(mean, low, high, reference) -> str:
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]" + ("" if pd.isna(reference) else f" / {reference:.2f}")


def markdown(table: pd.DataFrame) -> str:
    """Predicted [95% interval] / mp2018 PBE reference, per example (the README's table)."""
    lines = ["| example | mp2018 match (split) | formation energy, eV/atom: predicted [95%] / PBE | "
             "band gap, eV: predicted [95%] / PBE | experimental gap, eV |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        match = f"{r['mp_id']} ({r['split']})" if r["mp_id"] else "not in mp2018"
        experiment = "" if pd.isna(r["band_gap_exp"]) else f"{r['band_gap_exp']:.2f}"
        lines.append(f"| {r['example']} | {match} | "
                     f"{_cell(r['formation_energy_pred'], r['formation_energy_p2.5'], r['formation_energy_p97.5'], r.get('formation_energy_pbe'))} | "
                     f"{_cell(r['band_gap_pred'], r['band_gap_p2.5'], r['band_gap_p97.5'], r.get('band_gap_pbe'))} | {experiment} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "references.csv")
    args = parser.parse_args()

    import crysdiff
    from pymatgen.core import Structure

    structures = {path.stem: Structure.from_file(path) for path in sorted(EXAMPLES.glob("*.cif"))}
    found = find_in_mp2018(structures)
    experiment = pd.read_csv(EXAMPLES / "labels.csv", na_values=["na"]).set_index("material_id")["band_gap_exp"]
    rows = {name: {"example": name, "formula": s.composition.reduced_formula, **(found[name] or {"mp_id": ""}),
                   "band_gap_exp": experiment.get(name)} for name, s in structures.items()}
    for target, short in (("formation_energy_per_atom", "formation_energy"), ("band_gap", "band_gap")):
        frame = crysdiff.load(target, device="cpu").predict(str(EXAMPLES), samples=args.samples, seed=args.seed)
        for _, p in frame.iterrows():
            rows[p["id"]].update({f"{short}_pred": p["mean"], f"{short}_p2.5": p["p2.5"], f"{short}_p97.5": p["p97.5"],
                                  f"{short}_flags": p["flags"]})
    columns = ["example", "formula", "mp_id", "split", "rms", "formation_energy_pbe", "formation_energy_pred",
               "formation_energy_p2.5", "formation_energy_p97.5", "formation_energy_flags", "band_gap_pbe",
               "band_gap_exp", "band_gap_pred", "band_gap_p2.5", "band_gap_p97.5", "band_gap_flags"]
    table = pd.DataFrame(list(rows.values()), columns=columns)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(f"{args.out}: {sum(f is not None for f in found.values())} of {len(found)} examples found in mp2018")
    print(markdown(pd.read_csv(args.out, keep_default_na=False, na_values=[""]).fillna({"mp_id": ""})))


if __name__ == "__main__":
    main()
