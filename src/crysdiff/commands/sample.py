"""Generate crystal structures for compositions with a pre-trained model (crystal structure prediction).

Lattices are sampled by ancestral DDPM, fractional coordinates by predictor-corrector sampling of
the wrapped-normal score; the Langevin corrector moves both (the lattice's at --lattice-snr; see
crysdiff.sampling for the step sizes). Writes
one CIF per sample (OUT/<formula>_<k>.cif), OUT/samples.extxyz with all of them and OUT/samples.json
with a summary. Each structure is marked physically valid or not: valid means no two atoms closer
than 0.5 Å and a volume per atom within the training crystals' range (recorded in the checkpoint;
4.81-114.1 Å³, mp2018/train's, for checkpoints that predate it). --valid-only draws the invalid
ones again with fresh seeds until all are valid or each has been drawn --max-draws times, and
writes only the valid ones.

--model takes a pre-training checkpoint or the name of one shipped in the checkout's models/ folder;
the default, pretrained_pool_long2, is the pre-trained model whose samples are most often valid
(docs/method.md, "Validity of generated structures"); pretrained_pool is the earlier default.
The sampler's settings (--corrector-steps, --step-lr, --lattice-snr, --timesteps,
--schedule, --late-below, --late-step-lr, --late-corrector-steps) default to the ones chosen there
on validation compositions: the corrector moves the lattice at --lattice-snr 0.1, and in the second
half of the chain (--late-below 500) takes Langevin steps of --late-step-lr 3e-5 instead of 1e-5.
--lattice-snr 0 --late-below 0 is the paper's sampler (the one crysdiff evaluate-csp uses).

Example:
  crysdiff sample --composition SrTiO3 MgO --num-samples 10 --out samples/
  crysdiff sample --model runs/pre/model.ckpt --composition SrTiO3 --formula-units 1 --num-samples 10 --out samples/
  crysdiff sample --model runs/pre/model.ckpt --composition SrTiO3 NaCl --num-atoms 8 --num-samples 5 --out samples/
  crysdiff sample --model models/pretrained_pool.ckpt --composition MgO --num-samples 10 --valid-only --out samples/
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from crysdiff.commands._common import UsageError, check_device, fail, run_guarded

# pre-training checkpoints shipped with the checkout (models/ beside src/)
PRETRAINED_DIR = Path(__file__).resolve().parents[3] / "models"
DEFAULT_MODEL = "pretrained_pool_long2"
# the corrector also moves the lattice (crysdiff.sampling); chosen with
# benchmarks/sample_validity.py --set validation
LATTICE_SNR = 0.1
# the second half of the chain (t <= 500 of 1,000) takes Langevin steps three times larger
# (crysdiff.sampling, late_*); chosen with benchmarks/sample_validity_branch.py --set validation
LATE_BELOW = 500
LATE_STEP_LR = 3e-5


def shipped_models() -> dict[str, Path]:
    """Name -> path of the pre-training checkpoints in the checkout's ``models/`` folder."""
    return {p.stem: p for p in sorted(PRETRAINED_DIR.glob("*.ckpt"))}


def resolve_model(model: str) -> Path:
    """A checkpoint path, or the path of a shipped model given by name; ``UsageError`` otherwise."""
    if Path(model).is_file():
        return Path(model)
    shipped = shipped_models()
    if model in shipped:
        return shipped[model]
    names = ", ".join(shipped) or f"none found in {PRETRAINED_DIR}"
    raise UsageError(f"--model {model}: no such checkpoint file or shipped model (shipped: {names})")


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"pre-training checkpoint (OUT/model.ckpt of crysdiff pretrain) or shipped model name "
                             f"(default {DEFAULT_MODEL}; pretrained_pool is the earlier default)")
    parser.add_argument("--composition", nargs="+", required=True, help="one or more formulas, e.g. SrTiO3 Li2O")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--formula-units", type=int, help="formula units per cell (default: as written)")
    group.add_argument("--num-atoms", type=int, help="atoms per cell (a multiple of the reduced formula)")
    parser.add_argument("--num-samples", type=int, default=10, help="samples per composition")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    add_sampler_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=256, help="crystals sampled at once")
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda when available)")
    parser.add_argument("--valid-only", action="store_true",
                        help="keep only physically valid structures, drawing the invalid ones again (see --max-draws)")
    parser.add_argument("--max-draws", type=int, default=10,
                        help="with --valid-only: draws per requested structure at most (default 10)")


def add_sampler_arguments(parser) -> None:
    """The reverse process's settings (crysdiff.sampling.sample_structures); the defaults are the
    library's (the paper's sampler) except ``--lattice-snr``, ``--late-below`` and ``--late-step-lr``,
    chosen on validation compositions."""
    from crysdiff.config import SCHEDULES

    parser.add_argument("--corrector-steps", type=int, default=1, help="Langevin corrector steps per time step")
    parser.add_argument("--step-lr", type=float, default=1e-5, help="Langevin step size at the smallest noise")
    parser.add_argument("--lattice-snr", type=float, default=LATTICE_SNR,
                        help=f"signal-to-noise ratio of the Langevin corrector on the lattice (default {LATTICE_SNR}, "
                             f"chosen on validation compositions; 0: coordinates only, the paper's sampler)")
    parser.add_argument("--timesteps", type=int, help="reverse steps (default: all of the model's T)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="linear", help="spacing of a strided --timesteps")
    parser.add_argument("--late-below", type=int, default=LATE_BELOW,
                        help=f"the steps t <= this (of the model's T, 1,000 for the shipped models) are late and take "
                             f"--late-step-lr and --late-corrector-steps (default {LATE_BELOW}, chosen on validation "
                             f"compositions; 0: none, the paper's sampler)")
    parser.add_argument("--late-step-lr", type=float, default=LATE_STEP_LR,
                        help=f"Langevin step size at the smallest noise for the late steps (default {LATE_STEP_LR})")
    parser.add_argument("--late-corrector-steps", type=int,
                        help="Langevin corrector steps per late time step (default: --corrector-steps)")


SAMPLER_KEYS = ("corrector_steps", "step_lr", "lattice_snr", "timesteps", "schedule", "late_below",
                "late_corrector_steps", "late_step_lr")


def sampler_settings(args) -> dict:
    """The sampler's keyword arguments from the parsed ``add_sampler_arguments`` options."""
    return {key: getattr(args, key) for key in SAMPLER_KEYS}


def _draw_until_valid(draw, jobs: list, volumes, max_draws: int) -> tuple[list, list[str], list[int]]:
    """Draw every job once; with ``max_draws > 1`` draw the invalid ones again (a fresh seed each
    round) until all are valid or each has been drawn ``max_draws`` times."""
    from crysdiff.csp import validity

    crystals = draw([atoms for _, _, atoms in jobs], 0)
    reasons = [validity(crystal, volumes) for crystal in crystals]
    draws = [1] * len(jobs)
    for round_ in range(1, max_draws):
        missing = [i for i, reason in enumerate(reasons) if reason]
        if not missing:
            break
        for i, crystal in zip(missing, draw([jobs[i][2] for i in missing], round_)):
            crystals[i], reasons[i], draws[i] = crystal, validity(crystal, volumes), draws[i] + 1
    return crystals, reasons, draws


def run(args) -> int:
    def go():
        check_device(args.device)
        import ase.io
        import torch
        from pymatgen.io.cif import CifWriter

        from crysdiff.crystal import to_ase, to_pymatgen
        from crysdiff.csp import composition_atoms, generate, volume_range
        from crysdiff.domain import crystal_features
        from crysdiff.pretrain import load_pretrained
        from crysdiff.sampling import require_joint

        if args.max_draws < 1:
            return fail(f"--max-draws must be at least 1, got {args.max_draws}", 2)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = resolve_model(args.model)
        model, diffusion, config, payload = load_pretrained(path, map_location=device)
        require_joint(diffusion, str(path))
        volumes = volume_range(payload.get("data", {}))
        jobs = []
        for formula in args.composition:
            atoms = composition_atoms(formula, args.formula_units, args.num_atoms)
            jobs += [(formula, k, atoms) for k in range(args.num_samples)]

        def draw(compositions, round_):
            return generate(model, diffusion, compositions, batch_size=args.batch_size, seed=args.seed + 7919 * round_,
                            device=device, progress=True, **sampler_settings(args))

        start = time.perf_counter()
        crystals, reasons, draws = _draw_until_valid(draw, jobs, volumes, args.max_draws if args.valid_only else 1)
        seconds = time.perf_counter() - start
        args.out.mkdir(parents=True, exist_ok=True)
        frames, summary = [], []
        for (formula, k, _), crystal, reason, drawn in zip(jobs, crystals, reasons, draws):
            if args.valid_only and reason:
                continue
            name = f"{formula}_{k}"
            crystal.id = name
            CifWriter(to_pymatgen(crystal)).write_file(args.out / f"{name}.cif")
            atoms = to_ase(crystal)
            atoms.info.update(id=name, composition=formula, valid=not reason)
            frames.append(atoms)
            features = crystal_features(crystal.frac_coords, crystal.lattice) if crystal.volume > 0 else {}
            summary.append({"id": name, "composition": formula, "valid": not reason, "invalid_reason": reason,
                            "min_distance": features.get("min_distance"),
                            "volume_per_atom": features.get("volume_per_atom"), "volume": crystal.volume,
                            "draws": drawn})
        if frames:
            ase.io.write(args.out / "samples.extxyz", frames, format="extxyz")
        valid = sum(not reason for reason in reasons)
        (args.out / "samples.json").write_text(json.dumps({
            "model": str(path), "seed": args.seed, "sampler": sampler_settings(args), "seconds": seconds,
            "validity": {"min_distance": 0.5, "volume_per_atom": list(volumes)},
            "valid_only": args.valid_only, "max_draws": args.max_draws if args.valid_only else 1,
            "requested": len(jobs), "valid": valid, "draws": sum(draws), "samples": summary}, indent=1))
        rule = f"no atoms closer than 0.5 Å, {volumes[0]:.3g}-{volumes[1]:.3g} Å³ per atom"
        print(f"{len(summary)} structures written to {args.out} in {seconds:.1f} s; {valid} of {len(jobs)} valid "
              f"({rule})" + (f" after {sum(draws)} draws" if args.valid_only else ""))
        if args.valid_only and valid < len(jobs):
            print(f"crysdiff sample: only {valid} of {len(jobs)} requested structures are valid after "
                  f"{args.max_draws} draws each (--max-draws)", file=sys.stderr)
        return 0

    return run_guarded(go)
