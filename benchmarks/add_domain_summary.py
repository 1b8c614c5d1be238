"""Add the training-data summary that ``crysdiff predict``'s per-row flags need (see
:mod:`crysdiff.domain`) to checkpoints fine-tuned before fine-tuning wrote it, from the training
data the checkpoint itself names (``data.train_sources``, the crystals with a value of its target).
Only ``data["domain"]`` is added: weights, config and every other entry stay as they were.

    python benchmarks/add_domain_summary.py                       # the bundled models
    python benchmarks/add_domain_summary.py run/model.ckpt ...    # other checkpoints
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from crysdiff.cache import load_dataset  # noqa: E402
from crysdiff.checkpoint import load_checkpoint  # noqa: E402
from crysdiff.crystal import ValidationSettings  # noqa: E402
from crysdiff.domain import training_summary  # noqa: E402
from crysdiff.predict import bundled_models  # noqa: E402


def add_summary(path: Path) -> dict:
    payload = load_checkpoint(path, kind="finetune")
    data, config = payload["data"], payload["config"]
    target = payload["normalizer"]["target"]
    sources = [s if Path(s).is_absolute() else str(ROOT / s) for s in data["train_sources"]]
    if data.get("label_fraction", 1.0) != 1.0:
        raise SystemExit(f"{path}: trained on a subsample or a split this script does not redo; summarise it at fine-tuning")
    settings = ValidationSettings(min_distance=config["data"]["min_distance"], max_atoms=config["data"]["max_atoms"])
    cache = load_dataset(sources, settings=settings, progress=False)
    column = cache.label_names.index(target)
    labelled = np.flatnonzero(np.isfinite(cache.labels[:, column]))
    if len(labelled) != data["train_count"]:
        raise SystemExit(f"{path}: {len(labelled)} labelled crystals in {sources}, the checkpoint says {data['train_count']}")
    data["domain"] = training_summary(*cache.gather(labelled))
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return data["domain"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, help="default: the bundled models")
    args = parser.parse_args()
    for path in args.checkpoints or list(bundled_models().values()):
        summary = add_summary(path)
        print(f"{path}: {summary['crystals']} crystals, {len(summary['element_counts'])} elements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
