"""Where along the chain the default sampler's invalid samples go wrong (docs/method.md, "Late steps").

Samples the 20 validation compositions of ``benchmarks/sample_validity.py`` (10 each) as
``crysdiff sample`` does by default, keeps the state the network sees at a few time steps, and for
every invalid sample prints its closest pair of atoms and its volume per atom at those steps:

    python benchmarks/sample_trajectory.py [--seed 0] [--late-below 500]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from sample_validity import VALIDATION  # noqa: E402

from crysdiff.commands.sample import DEFAULT_MODEL, add_sampler_arguments, sampler_settings  # noqa: E402

KEEP = (1000, 800, 600, 500, 400, 300, 200, 150, 100, 50, 20, 5, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=f"models/{DEFAULT_MODEL}.ckpt")
    parser.add_argument("--seed", type=int, default=0)
    add_sampler_arguments(parser)
    args = parser.parse_args()

    from crysdiff.csp import composition_atoms, composition_batch, to_crystals, validity, volume_range
    from crysdiff.pretrain import load_pretrained
    from crysdiff.sampling import sample_structures

    torch.set_num_threads(1)
    model, diffusion, _, payload = load_pretrained(ROOT / args.model)
    names = [f for group in VALIDATION.values() for f in group for _ in range(10)]
    compositions = [composition_atoms(f) for f in names]
    batch = composition_batch(compositions, args.seed)  # as csp.generate builds it (one batch)
    seen = {}

    def spy(b, frac, lattice, t):
        seen.setdefault(int(t[0]), (frac.clone(), lattice.clone()))
        return model(b, frac, lattice, t)

    spy.parameters = model.parameters
    settings = {k: v for k, v in sampler_settings(args).items() if v is not None}
    frac, lattice = sample_structures(spy, diffusion, batch, **settings, generator=torch.Generator().manual_seed(args.seed))
    volumes = volume_range(payload.get("data", {}))
    offsets = np.concatenate([[0], np.cumsum([len(z) for z in compositions])])
    for k, crystal in enumerate(to_crystals(compositions, frac, lattice)):
        reason = validity(crystal, volumes)
        if not reason:
            continue
        edges = np.linalg.norm(crystal.lattice, axis=1)
        print(f"{names[k]} (sample {k}): {reason}; edges {np.round(edges, 2)} Å")
        for t in (t for t in KEEP if t in seen):
            f, lat = seen[t][0][offsets[k]:offsets[k + 1]].double().numpy(), seen[t][1][k].double().numpy()
            d = f[:, None] - f[None]
            d -= np.round(d)
            distance = np.linalg.norm(d @ lat, axis=-1) + np.eye(len(f)) * 1e9  # [n, n], within the cell
            i, j = np.unravel_index(distance.argmin(), distance.shape)
            print(f"  t={t:4d}  volume per atom {abs(np.linalg.det(lat)) / len(f):8.2f} Å³  "
                  f"closest pair {i},{j} {distance.min():.3f} Å")


if __name__ == "__main__":
    main()
