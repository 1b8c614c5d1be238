"""Raw validity of a pre-trained model's samples on 20 common compositions, 10 samples each
(issue 22): the fraction with no two atoms closer than 0.5 Å and a volume per atom within the
training range (``crysdiff.csp.validity``), drawn once each, as ``crysdiff sample`` without
``--valid-only`` writes them.

    python benchmarks/sample_validity.py [--model models/pretrained_pool.ckpt] [--corrector-steps 1]
        [--step-lr 1e-5] [--timesteps N]

Each run (one setting of the sampler) is stored under its settings in
benchmarks/results/sample_validity.json, beside the runs with other settings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMPOSITIONS = {
    "oxides": ["MgO", "ZnO", "TiO2", "Al2O3", "SiO2"],
    "halides": ["NaCl", "KCl", "CsCl", "CaF2", "LiF"],
    "intermetallics": ["NiAl", "Cu3Au", "TiAl3", "Ni3Al", "MgZn2"],
    "perovskites": ["SrTiO3", "BaTiO3", "CaTiO3", "KNbO3", "CsPbI3"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/pretrained_pool.ckpt")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corrector-steps", type=int, default=1)
    parser.add_argument("--step-lr", type=float, default=1e-5)
    parser.add_argument("--timesteps", type=int, help="reverse steps (default: all of the model's T)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sample_validity.json")
    args = parser.parse_args()

    from crysdiff.csp import composition_atoms, generate, validity, volume_range
    from crysdiff.pretrain import load_pretrained

    torch.set_num_threads(1)  # the machine is shared: two threads spin against other jobs (15x slower measured)
    model, diffusion, _, payload = load_pretrained(ROOT / args.model)
    volumes = volume_range(payload.get("data", {}))
    formulas = [f for group in COMPOSITIONS.values() for f in group]
    jobs = [(f, composition_atoms(f)) for f in formulas for _ in range(args.samples)]
    start = time.perf_counter()
    crystals = generate(model, diffusion, [atoms for _, atoms in jobs], seed=args.seed,
                        corrector_steps=args.corrector_steps, step_lr=args.step_lr, timesteps=args.timesteps)
    seconds = time.perf_counter() - start
    reasons = [validity(crystal, volumes) for crystal in crystals]
    per_formula = {f: {"valid": 0, "invalid_reasons": []} for f in formulas}
    for (formula, _), reason in zip(jobs, reasons):
        if reason:
            per_formula[formula]["invalid_reasons"].append(reason)
        else:
            per_formula[formula]["valid"] += 1
    valid = sum(not r for r in reasons)
    settings = {"model": args.model, "samples": args.samples, "seed": args.seed,
                "corrector_steps": args.corrector_steps, "step_lr": args.step_lr,
                "timesteps": args.timesteps or diffusion.timesteps}
    run = {**settings, "valid": valid, "count": len(jobs), "validity": valid / len(jobs),
           "by_group": {g: sum(per_formula[f]["valid"] for f in group) / (len(group) * args.samples)
                        for g, group in COMPOSITIONS.items()},
           "volume_per_atom_range": list(volumes), "seconds": seconds, "per_composition": per_formula,
           "command": f"python benchmarks/sample_validity.py --model {args.model} --corrector-steps "
                      f"{args.corrector_steps} --step-lr {args.step_lr}"
                      + (f" --timesteps {args.timesteps}" if args.timesteps else "")}
    runs = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    runs = [r for r in runs if {k: r.get(k) for k in settings} != settings] + [run]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"compositions": COMPOSITIONS, "runs": runs}, indent=1))
    print(f"{args.model} corrector_steps={args.corrector_steps} step_lr={args.step_lr} timesteps={settings['timesteps']}: "
          f"{valid} of {len(jobs)} valid ({valid / len(jobs):.1%}) in {seconds:.0f} s; by group {run['by_group']}")


if __name__ == "__main__":
    main()
