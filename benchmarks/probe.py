"""Linear probe of encoder representations: how much of a property a frozen encoder's pooled atom
states hold, pre-trained against randomly initialised (issue 4: why pre-training does not help
formation energy).

    python benchmarks/probe.py [--checkpoint NAME=CKPT ...] [--target formation_energy_per_atom band_gap]
                               [--train-limit 6000] [--out benchmarks/results/probe/mp2018.json]

By default: the pool model, a random encoder and the three ablation pre-trainings. Each encoder
reads the clean structures of ``mp2018/train`` (the first ``--train-limit``) and ``mp2018/val`` at
``t = 0``. These feature sets are probed per encoder (the per-layer ones for the equivariant
encoder only):

* ``embedding``: the mean over atoms of the atom-type embedding (what the encoder knows of the
  composition before any message passing);
* ``pooled``: the mean over atoms of the final atom states (what the fine-tuning head sees);
* ``pooled+std``: the pooled mean and the per-feature standard deviation over atoms;
* ``layer0`` .. ``layer3``: the mean over atoms of the states entering each layer, and
  ``all_layers``, those and the output side by side.

A ridge regression (the closed form, the penalty picked on a held-out fifth of the training
crystals) is fitted on the standardised features and scored on ``mp2018/val``. A random encoder
(``NAME=random``, initialised from seed 0; ``NAME=random:S`` from seed ``S``, to see how much one
initialisation differs from another) is the floor a pre-training must beat: if the pre-trained
features predict the property worse with a linear head, the encoder starts fine-tuning behind a
random one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEFAULT_CHECKPOINTS = ("pool=models/pretrained_pool.ckpt", "random=random",
                       "lattice_only=models/ablation/pretrained_lattice.ckpt",
                       "coords_only=models/ablation/pretrained_coords.ckpt",
                       "cartesian=models/ablation/pretrained_cartesian.ckpt")
ALPHAS = tuple(10.0 ** k for k in range(-3, 5))


def _features(encoder, cache, indices: np.ndarray, edges, batch_size: int) -> dict[str, np.ndarray]:
    """Per-crystal feature sets (see the module docstring), in the order of ``indices``."""
    from crysdiff.denoiser import CrysDiffEncoder
    from crysdiff.loader import make_loader
    from crysdiff.property_model import pool_mean

    parts: dict[str, list[np.ndarray]] = {"embedding": [], "pooled": [], "pooled+std": []}
    order = []
    with torch.no_grad():
        for batch in make_loader(cache, indices, batch_size=batch_size, edges=edges):
            def pool(x):
                return pool_mean(x.double(), batch.batch, batch.num_atoms.shape[0])

            t = torch.zeros(batch.num_atoms.shape[0], dtype=torch.long)
            if isinstance(encoder, CrysDiffEncoder):
                *inner, nodes = encoder(batch, batch.frac_coords, batch.lattice, t, all_layers=True)
                for k, state in enumerate(inner):
                    parts.setdefault(f"layer{k}", []).append(pool(state).numpy())
                parts.setdefault("all_layers", []).append(torch.cat([pool(x) for x in (*inner, nodes)], dim=1).numpy())
            else:
                nodes = encoder(batch, batch.frac_coords, batch.lattice, t)
            embed = encoder.atom_embedding(batch.atomic_numbers) if hasattr(encoder, "atom_embedding") else nodes
            mean = pool(nodes)
            spread = (pool(nodes.double() ** 2) - mean ** 2).clamp(min=0).sqrt()
            parts["embedding"].append(pool(embed).numpy())
            parts["pooled"].append(mean.numpy())
            parts["pooled+std"].append(torch.cat([mean, spread], dim=1).numpy())
            order.append(np.asarray(batch.index))
    position = np.argsort(np.concatenate(order))  # back to the (sorted) order of ``indices``
    return {name: np.concatenate(chunks)[position] for name, chunks in parts.items()}


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                seed: int = 0) -> dict[str, float]:
    """Ridge regression on standardised features; the penalty is chosen on a held-out fifth of the
    training rows, then refitted on all of them. Returns the test MAE, R² and the chosen penalty."""
    mu, sigma = x_train.mean(0), x_train.std(0) + 1e-8
    a, b = (x_train - mu) / sigma, (x_test - mu) / sigma
    y_mean = y_train.mean()

    def fit(x, y, alpha):
        gram = x.T @ x + alpha * np.eye(x.shape[1])
        return np.linalg.solve(gram, x.T @ (y - y_mean))

    rng = np.random.default_rng(seed)
    held = rng.permutation(len(a))
    cut = len(a) // 5
    inner, outer = held[cut:], held[:cut]
    scores = {alpha: np.abs(a[outer] @ fit(a[inner], y_train[inner], alpha) + y_mean - y_train[outer]).mean()
              for alpha in ALPHAS}
    alpha = min(scores, key=scores.get)
    pred = b @ fit(a, y_train, alpha) + y_mean
    residual = y_test - pred
    return {"mae": float(np.abs(residual).mean()),
            "r2": float(1 - (residual ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum()),
            "alpha": alpha}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", nargs="+", default=list(DEFAULT_CHECKPOINTS),
                        help="NAME=PATH of a pre-training checkpoint, or NAME=random (NAME=random:SEED) for a fresh "
                             "encoder initialised from seed 0 (SEED)")
    parser.add_argument("--target", nargs="+", default=["formation_energy_per_atom", "band_gap"])
    parser.add_argument("--train-limit", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "probe" / "mp2018.json"))
    args = parser.parse_args()

    from crysdiff.batching import EdgeSettings
    from crysdiff.cache import load_dataset
    from crysdiff.checkpoint import load_checkpoint
    from crysdiff.config import DataConfig, from_dict, to_dict
    from crysdiff.denoiser import DenoiserConfig, build_encoder

    torch.manual_seed(0)
    train = load_dataset([DATA / "mp2018" / "train.csv.gz"], progress=False)
    val = load_dataset([DATA / "mp2018" / "val.csv.gz"], progress=False)
    train_idx = np.arange(min(args.train_limit, len(train)))
    val_idx = np.arange(len(val))
    labels = {target: (train.subset_labels(train_idx, [target])[:, 0], val.subset_labels(val_idx, [target])[:, 0])
              for target in args.target}
    results = {"train_count": int(len(train_idx)), "val_count": int(len(val_idx)), "alphas": list(ALPHAS),
               "command": f"python benchmarks/probe.py --checkpoint {' '.join(args.checkpoint)} --target {' '.join(args.target)} "
                          f"--train-limit {args.train_limit}",
               "threads": torch.get_num_threads(), "encoders": {}}
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        fresh = path == "random" or path.startswith("random:")
        if fresh:  # its own seed, so its weights do not depend on the encoders listed before it
            model_config, data = DenoiserConfig(), to_dict(DataConfig())
            torch.manual_seed(int(path.partition(":")[2] or 0))
        else:
            payload = load_checkpoint(ROOT / path, kind="pretrain")
            model_config, data = from_dict(DenoiserConfig, payload["config"]["model"]), payload["config"]["data"]
        encoder = build_encoder(model_config).eval()
        if not fresh:
            state = {k[len("encoder."):]: v for k, v in payload["state_dict"].items() if k.startswith("encoder.")}
            encoder.load_state_dict(state)
        edges = EdgeSettings(max_dense_atoms=data["max_dense_atoms"], knn_neighbors=data["knn_neighbors"])
        started = time.perf_counter()
        x_train = _features(encoder, train, train_idx, edges, args.batch_size)
        x_val = _features(encoder, val, val_idx, edges, args.batch_size)
        entry = {"checkpoint": path, "encode_seconds": time.perf_counter() - started, "probes": {}}
        for target, (y_train, y_val) in labels.items():
            keep_train, keep_val = np.isfinite(y_train), np.isfinite(y_val)
            entry["probes"][target] = {
                kind: ridge_probe(x_train[kind][keep_train], y_train[keep_train], x_val[kind][keep_val], y_val[keep_val])
                for kind in x_train
            }
        results["encoders"][name] = entry
        print(name, json.dumps({t: {k: round(v["mae"], 4) for k, v in p.items()} for t, p in entry["probes"].items()}),
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
