"""Several late-step sampler settings of ``benchmarks/sample_validity.py`` from one shared chain.

A setting that changes only the steps ``t <= late_below`` (``--late-below``, ``--late-corrector-steps``,
``--late-step-lr``) leaves the chain above ``late_below`` as it is: the same network calls on the same
states with the same random numbers. This runs that common part once, keeps its state (coordinates,
lattices and the random generator's state) at each ``late_below`` asked for, and finishes the chain
from there once per setting, so each result is the one ``sample_validity.py`` with that setting and
seed would give (``tests/test_sampling.py`` checks the equality), at a fraction of the cost. The
first result is the base setting itself (no late steps: ``--late-below 0``), the chain run to the end.

    python benchmarks/sample_validity_branch.py --set validation --seed 0 --late-below 0 \\
        --variant late_below=100,late_corrector_steps=3 --variant late_below=30,late_corrector_steps=5

Each result is stored in the results file of ``sample_validity.py`` under its settings, with the
``sample_validity.py`` command that reproduces it; its ``seconds`` are the shared part's up to its
branch point plus its own tail (loaded-machine time, comparable only within one invocation).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_validity import add_run_arguments, compositions_and_file, record, store  # noqa: E402

from crysdiff.commands.sample import sampler_settings  # noqa: E402

LATE_KEYS = {"late_below": int, "late_corrector_steps": int, "late_step_lr": float}


def parse_variant(text: str) -> dict:
    """``"late_below=100,late_corrector_steps=3"`` -> ``{"late_below": 100, "late_corrector_steps": 3}``."""
    variant = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in LATE_KEYS:
            raise SystemExit(f"--variant {text}: {key!r} is not a late-step setting ({', '.join(LATE_KEYS)})")
        variant[key] = LATE_KEYS[key](value)
    if variant.get("late_below", 0) < 1:
        raise SystemExit(f"--variant {text}: needs late_below >= 1")
    return variant


def branched(model, diffusion, batch, base: dict, variants: list[dict], generator: torch.Generator):
    """``[(frac, lattice, seconds)]`` of the base setting and of each variant, sharing the chain above each
    variant's ``late_below``."""
    from crysdiff.sampling import _prior, _reverse

    if base.get("late_below"):
        raise SystemExit("the base setting must have no late steps: give --late-below 0")
    core = {k: base[k] for k in ("corrector_steps", "step_lr", "lattice_snr")}
    frac, lattice, pairs, noise = _prior(model, diffusion, batch, base["timesteps"], base["schedule"], generator)
    snapshots, done, start = {}, 0, time.perf_counter()
    for below in sorted({v["late_below"] for v in variants}, reverse=True):
        head = [(t, s) for t, s in pairs[done:] if t > below]
        frac, lattice = _reverse(model, diffusion, batch, frac, lattice, head, noise, **core)
        done += len(head)
        snapshots[below] = (frac.clone(), lattice.clone(), generator.get_state(), done, time.perf_counter() - start)
    frac, lattice = _reverse(model, diffusion, batch, frac, lattice, pairs[done:], noise, **core)
    results = [(frac, lattice, time.perf_counter() - start)]
    for variant in variants:
        frac, lattice, state, done, shared = snapshots[variant["late_below"]]
        generator.set_state(state)
        tic = time.perf_counter()
        frac, lattice = _reverse(model, diffusion, batch, frac, lattice, pairs[done:], noise, **core, **variant)
        results.append((frac, lattice, shared + time.perf_counter() - tic))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--variant", action="append", required=True, type=parse_variant,
                        help="late-step settings, e.g. late_below=100,late_corrector_steps=3 (repeatable)")
    args = parser.parse_args()
    groups, out = compositions_and_file(args)

    from crysdiff.csp import composition_atoms, composition_batch, to_crystals, volume_range
    from crysdiff.pretrain import load_pretrained

    torch.set_num_threads(1)
    model, diffusion, _, payload = load_pretrained(Path(__file__).resolve().parents[1] / args.model)
    compositions = [composition_atoms(f) for group in groups.values() for f in group for _ in range(args.samples)]
    if len(compositions) > 256:
        raise SystemExit("one batch only (generate's batch_size 256): use fewer --samples")
    # the variants carry their own late-step settings; the base has none
    base = sampler_settings(args) | {"timesteps": args.timesteps or diffusion.timesteps}
    if base["late_below"]:
        raise SystemExit("the base setting must have no late steps: give --late-below 0")
    base |= {"late_corrector_steps": None, "late_step_lr": None}
    batch = composition_batch(compositions, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    volumes = volume_range(payload.get("data", {}))
    results = branched(model, diffusion, batch, base, args.variant, generator)
    for variant, (frac, lattice, seconds) in zip([{}] + args.variant, results):
        sampler = base | variant
        run = record(args, sampler, groups, to_crystals(compositions, frac, lattice), volumes, seconds,
                     made_by="benchmarks/sample_validity_branch.py (chain shared above late_below)")
        store(out, groups, run)


if __name__ == "__main__":
    main()
