"""Train and test the CGCNN-style peer on identical splits under a wall-clock budget.

Example:
    python -m benchmarks.peers.train_cgcnn --train ../shared/data/mp2018/train.csv.gz \\
        --val ../shared/data/mp2018/val.csv.gz --test ../shared/data/mp2018/val.csv.gz \\
        --target formation_energy_per_atom --minutes 4 --out runs/peers/cgcnn_mp2018 train.batch_size=64

The data path is crysdiff's (cache, :func:`benchmarks.peers.protocol.select_split`, the seeded
batch sampler of :mod:`crysdiff.loader`), the training loop is crysdiff's engine
(:func:`crysdiff.engine.make_trainer` with a :class:`~crysdiff.config.TrainConfig`; the budget is
``train.max_time_minutes``). Settings that differ from crysdiff's fine-tuning defaults, and why:

* loss: L1 on the standardised target (the reported metric is the MAE);
* learning rate: AdamW 1e-3, linear warm-up, then a cosine decay over the *wall-clock budget*
  (the number of steps a budget allows is not known in advance, so the schedule runs on time);
* no EMA of the weights (the original CGCNN has none); the weights kept are those of the best
  validation MAE (validated every epoch and once more when the budget ends).

The neighbour lists of all three parts are built before training starts and are not counted in the
budget, like crysdiff's data loading; ``metrics.json`` reports their time separately.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F

from benchmarks.peers.cgcnn import CGCNN, CGCNNConfig, GraphDataset
from benchmarks.peers.neighbors import build_neighbor_table
from benchmarks.peers.protocol import add_peer_arguments, select_split, write_outputs
from crysdiff.config import TrainConfig, apply_overrides, save_yaml, to_dict

__all__ = ["CGCNNRunConfig", "CGCNNTask", "run_cgcnn", "main"]


@dataclass(frozen=True)
class CGCNNRunConfig:
    """``model``: the network; ``train``: crysdiff's engine settings; ``loss``: ``"l1"`` or ``"mse"``."""

    model: CGCNNConfig = field(default_factory=CGCNNConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=64, lr=1e-3, warmup_steps=100, max_epochs=0, ema_decay=0.0, checkpoint_every_steps=0,
        log_every_steps=20, precision="32-true"))
    loss: str = "l1"


class CGCNNTask(L.LightningModule):
    """Batch in, loss out: the loss on the standardised target; validation logs ``val/mae`` (target unit)."""

    def __init__(self, model: CGCNN, config: CGCNNRunConfig, budget_seconds: float, total_steps: int = 0):
        super().__init__()
        if config.loss not in ("l1", "mse"):
            raise ValueError(f"loss must be 'l1' or 'mse', found {config.loss!r}")
        self.model, self.config, self.budget_seconds = model, config, budget_seconds
        self.total_steps = int(total_steps)  # > 0: the cosine runs over these steps, the budget is only a cap
        self._started: float | None = None
        self._val: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        out = self.model(batch)
        target = ((batch.y - self.model.y_mean) / self.model.y_std).float()  # [B]
        loss = F.l1_loss(out["y_normalised"], target) if self.config.loss == "l1" else F.mse_loss(out["y_normalised"], target)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch.num_atoms.shape[0]))
        return loss

    def validation_step(self, batch, batch_idx):
        error = (self.model(batch)["y"] - batch.y).abs()
        self._val.append(error.detach().cpu())

    def on_validation_epoch_end(self):
        if self._val:
            self.log("val/mae", torch.cat(self._val).mean().float(), prog_bar=True)
        self._val = []

    def configure_optimizers(self):
        train = self.config.train
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay)

        def factor(step: int) -> float:
            # warm-up on steps, then a cosine over the planned steps (train.max_steps / max_epochs) or,
            # with neither set, over the fraction of the wall-clock budget used
            if self._started is None:  # the first call, when training starts
                self._started = time.perf_counter()
            if step < train.warmup_steps:
                return (step + 1) / train.warmup_steps
            if self.total_steps:
                progress = min(1.0, (step - train.warmup_steps) / max(1, self.total_steps - train.warmup_steps))
            else:
                progress = min(1.0, (time.perf_counter() - self._started) / max(self.budget_seconds, 1e-9))
            return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _identity(batch):
    return batch


def _loader(selection, table, target, train: TrainConfig, *, shuffle: bool, seed: int):
    from crysdiff.loader import CrystalBatchSampler, CrystalLoader

    sampler = CrystalBatchSampler(selection.indices, selection.cache.num_atoms, batch_size=train.batch_size,
                                  max_atoms_per_batch=train.max_atoms_per_batch or None, shuffle=shuffle, seed=seed)
    return CrystalLoader(GraphDataset(selection.cache, table, target), batch_sampler=sampler,
                         collate_fn=_identity, num_workers=0)


@torch.no_grad()
def _predict(model: CGCNN, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model.eval()
    index, y, pred = [], [], []
    for batch in loader:
        index.append(batch.index.numpy())
        y.append(batch.y.numpy())
        pred.append(model(batch)["y"].numpy())
    return np.concatenate(index), np.concatenate(y), np.concatenate(pred)


def run_cgcnn(train, val, test, target: str, out_dir: str | Path, *, minutes: float, seed: int = 0,
              label_fraction: float = 1.0, train_ids=None, val_ids=None, test_ids=None,
              config: CGCNNRunConfig = CGCNNRunConfig(), progress: bool = False) -> dict:
    """Train on ``train``, select on ``val``, predict ``test``; write ``OUT/test_predictions.csv`` and
    ``OUT/metrics.json`` (see :mod:`benchmarks.peers.protocol`). Returns the metrics."""
    from crysdiff.engine import make_trainer, planned_steps
    from crysdiff.runfolder import best_state_dict

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_config = apply_overrides(config.train, {"max_time_minutes": float(minutes), "seed": int(seed)})
    config = CGCNNRunConfig(model=config.model, train=train_config, loss=config.loss)
    save_yaml(config, out_dir / "config.yaml")
    L.seed_everything(seed, workers=True, verbose=False)
    parts = select_split(train, val, test, target, train_ids=train_ids, val_ids=val_ids, test_ids=test_ids,
                         label_fraction=label_fraction, seed=seed, progress=progress)
    loaded = time.perf_counter()
    tables = {name: build_neighbor_table(s.cache, s.indices, config.model.neighbors) for name, s in parts.items()}
    graphs = time.perf_counter()
    y_train = parts["train"].targets(target)
    model = CGCNN(config.model, y_mean=float(y_train.mean()), y_std=float(y_train.std() or 1.0))
    train_loader = _loader(parts["train"], tables["train"], target, train_config, shuffle=True, seed=seed)
    by_steps = train_config.max_steps > 0 or train_config.max_epochs > 0
    total_steps = planned_steps(train_config, len(train_loader)) if by_steps else 0
    task = CGCNNTask(model, config, budget_seconds=60.0 * minutes, total_steps=total_steps)
    trainer = make_trainer(train_config, out_dir, monitor="val/mae", progress=progress, has_validation=True)
    val_loader = _loader(parts["val"], tables["val"], target, train_config, shuffle=False, seed=seed)
    trainer.fit(task, train_loader, val_loader)
    fitted = time.perf_counter()

    # keep the weights with the best validation MAE: the last ones, or the best checkpoint's
    _, y_val, p_val = _predict(model, val_loader)
    final_val_mae = float(np.mean(np.abs(p_val - y_val)))
    best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best_score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    chosen = "final"
    if best_path and Path(best_path).is_file() and best_score is not None and float(best_score) < final_val_mae:
        task.load_state_dict(best_state_dict(trainer, out_dir))
        chosen = f"best checkpoint (val MAE {float(best_score):.4g})"
    _, y_val, p_val = _predict(model, val_loader)
    test_index, y_test, p_test = _predict(model, _loader(parts["test"], tables["test"], target, train_config,
                                                         shuffle=False, seed=seed))
    torch.save({"config": to_dict(config), "state_dict": model.state_dict(), "target": target}, out_dir / "model.pt")
    cache = parts["test"].cache
    seconds = {"load": loaded - started, "neighbors": graphs - loaded, "train": fitted - graphs,
               "predict": time.perf_counter() - fitted, "total": time.perf_counter() - started}
    neighbors = {name: {"crystals": len(t), "seconds": t.seconds, "crystals_per_second": len(t) / max(t.seconds, 1e-9),
                        "edges_per_atom": float(t.source.size / max(1, parts[name].cache.num_atoms[t.positions].sum()))}
                 for name, t in tables.items()}
    settings = {
        "model": "cgcnn", "target": target, "unit": parts["train"].cache.units.get(target, ""),
        "minutes": minutes, "seed": seed, "label_fraction": label_fraction,
        "train": {"sources": parts["train"].sources, "count": len(parts["train"].indices),
                  "missing_dropped": parts["train"].dropped_missing, "ids_file": str(train_ids) if train_ids else None},
        "val": {"sources": parts["val"].sources, "count": len(parts["val"].indices), "ids_file": str(val_ids) if val_ids else None},
        "test": {"sources": parts["test"].sources, "count": len(parts["test"].indices), "ids_file": str(test_ids) if test_ids else None},
        "config": to_dict(config), "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(), "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step),
        "planned_steps": total_steps, "schedule": "steps" if total_steps else "wall clock",
        "stopped_by_cap": bool(total_steps) and int(trainer.global_step) < total_steps,
        "weights": chosen,
    }
    extra = {"val": {"mae": float(np.mean(np.abs(p_val - y_val))), "count": int(y_val.size)}, "neighbor_lists": neighbors}
    return write_outputs(out_dir, [cache.id(int(i)) for i in test_index], y_test, p_test, seconds=seconds,
                         settings=settings, extra=extra)


def _move_overrides(args) -> None:
    """``key=value`` items written after ``--test SRC`` are swallowed by that option: move them back."""
    for name in ("train", "val", "test"):
        values = getattr(args, name)
        moved = [v for v in values if re.match(r"^[A-Za-z_][\w.]*=", v) and not Path(v).exists()]
        setattr(args, name, [v for v in values if v not in moved])
        args.overrides = moved + args.overrides
        if not getattr(args, name):
            raise SystemExit(f"--{name}: no data source given (only overrides: {' '.join(moved)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.train_cgcnn",
        description="Train a CGCNN-style model within a wall-clock budget and predict a test set.",
        epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_peer_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. model.hidden_dim=128 train.batch_size=32 loss=mse")
    args = parser.parse_args(argv)
    _move_overrides(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = apply_overrides(CGCNNRunConfig(), args.overrides)
    metrics = run_cgcnn(args.train, args.val, args.test, args.target, args.out, minutes=args.minutes, seed=args.seed,
                        label_fraction=args.label_fraction, train_ids=args.train_ids, val_ids=args.val_ids,
                        test_ids=args.test_ids, config=config, progress=args.progress)
    print(f"cgcnn {args.target}: test MAE {metrics['mae']:.4g} over {metrics['count']} crystals "
          f"({metrics['seconds']['train']:.0f} s training); wrote {args.out}/test_predictions.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
