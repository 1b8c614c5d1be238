"""Generate crystal structures for compositions with a pre-trained model (crystal structure prediction).

Lattices are sampled by ancestral DDPM, fractional coordinates by predictor-corrector sampling of
the wrapped-normal score (Langevin corrector; see crysdiff.sampling for the step size). Writes
one CIF per sample (OUT/<formula>_<k>.cif) and OUT/samples.extxyz with all of them.

Example:
  crysdiff sample --model runs/pre/model.ckpt --composition SrTiO3 --formula-units 1 --num-samples 10 --out samples/
  crysdiff sample --model runs/pre/model.ckpt --composition SrTiO3 NaCl --num-atoms 8 --num-samples 5 --out samples/
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from crysdiff.commands._common import check_device, run_guarded


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="pre-training checkpoint (OUT/model.ckpt of crysdiff pretrain)")
    parser.add_argument("--composition", nargs="+", required=True, help="one or more formulas, e.g. SrTiO3 Li2O")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--formula-units", type=int, help="formula units per cell (default: as written)")
    group.add_argument("--num-atoms", type=int, help="atoms per cell (a multiple of the reduced formula)")
    parser.add_argument("--num-samples", type=int, default=10, help="samples per composition")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corrector-steps", type=int, default=1, help="Langevin corrector steps per time step")
    parser.add_argument("--step-lr", type=float, help="Langevin corrector step size (default: the sampler's)")
    parser.add_argument("--batch-size", type=int, default=256, help="crystals sampled at once")
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")


def run(args) -> int:
    def go():
        check_device(args.device)
        import ase.io
        import torch
        from pymatgen.io.cif import CifWriter

        from crysdiff.crystal import to_ase, to_pymatgen
        from crysdiff.csp import composition_atoms, generate, is_usable
        from crysdiff.pretrain import load_pretrained
        from crysdiff.sampling import require_joint

        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, diffusion, config, _ = load_pretrained(args.model, map_location=device)
        require_joint(diffusion, str(args.model))
        jobs = []
        for formula in args.composition:
            atoms = composition_atoms(formula, args.formula_units, args.num_atoms)
            jobs += [(formula, k, atoms) for k in range(args.num_samples)]
        start = time.perf_counter()
        crystals = generate(model, diffusion, [z for _, _, z in jobs], batch_size=args.batch_size, seed=args.seed,
                            corrector_steps=args.corrector_steps, step_lr=args.step_lr, device=device, progress=True)
        seconds = time.perf_counter() - start
        args.out.mkdir(parents=True, exist_ok=True)
        frames, summary = [], []
        for (formula, k, _), crystal in zip(jobs, crystals):
            name = f"{formula}_{k}"
            crystal.id = name
            usable = is_usable(crystal)
            CifWriter(to_pymatgen(crystal)).write_file(args.out / f"{name}.cif")
            atoms = to_ase(crystal)
            atoms.info.update(id=name, composition=formula, usable=usable)
            frames.append(atoms)
            summary.append({"id": name, "composition": formula, "usable": usable, "volume": crystal.volume})
        ase.io.write(args.out / "samples.extxyz", frames, format="extxyz")
        (args.out / "samples.json").write_text(json.dumps({"model": str(args.model), "seed": args.seed,
                                                           "seconds": seconds, "samples": summary}, indent=1))
        print(f"{len(crystals)} structures written to {args.out} in {seconds:.1f} s "
              f"({sum(s['usable'] for s in summary)} usable: no atoms closer than 0.5 Å)")

    return run_guarded(go)
