"""Fine-tuning (paper Alg. 2): the config, the Lightning task and the run.

The network itself (encoder + property head, Alg. 2 loss, Alg. 3 prediction) is
:class:`crysdiff.property_model.PropertyModel`. This module builds it from a config and an
``--init`` checkpoint (a pre-training one, whose encoder is kept; a fine-tuned one, refined as a
whole; or none), trains it and writes a self-contained checkpoint that :func:`crysdiff.load` reads.

The ablations of paper Fig. 5 are config fields of this one implementation: ``freeze_encoder``
(without updating the encoder), ``extra_init`` (without joint diffusion: average a second
pre-trained encoder), ``fix_structure=false`` (without fixing structures) and, at pre-training,
``model.kind=cartesian`` (without the equivariant encoder).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch

from crysdiff.card import PropertyDiffusion
from crysdiff.config import from_dict, save_yaml, to_dict
from crysdiff.denoiser import DenoiserConfig
from crysdiff.metrics import regression_metrics
from crysdiff.diffusion import DiffusionConfig
from crysdiff.property_model import PropertyModel, pool_mean
from crysdiff.restore import FinetuneConfig, build_property_model, payload_config, stored_finetune_config, stored_state
from crysdiff.uncertainty import conformal_interval_scale

__all__ = ["FinetuneConfig", "PropertyModel", "FinetuneTask", "pool_mean", "run_finetune", "build_property_model",
           "regression_metrics", "stored_finetune_config"]


# --- the Lightning task and the run -----------------------------------------------------------------


class FinetuneTask(L.LightningModule):
    """Alg. 2 as a Lightning module; validation runs Alg. 3 and logs the MAE in the target's unit."""

    def __init__(self, config: FinetuneConfig, model: PropertyModel):
        super().__init__()
        self.config = config
        self.model = model
        self.diffusion = PropertyDiffusion(config.property)
        if config.freeze_encoder:
            for p in self.model.encoder.parameters():
                p.requires_grad_(False)
        self._val = []
        self.total_steps: int | None = None  # the schedule's length, set by run_finetune (see planned_steps)

    def _target(self, batch) -> torch.Tensor:
        return batch.y[:, 0].double()

    def training_step(self, batch, batch_idx):
        if self.config.freeze_encoder:
            self.model.encoder.eval()
        out = self.model.loss(batch, self._target(batch), self.diffusion)
        size = int(batch.num_atoms.shape[0])
        for key, value in out.items():
            self.log(f"train/{key}", value, prog_bar=key == "loss", batch_size=size)
        return out["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._generator = torch.Generator(device=self.device).manual_seed(777)

    def validation_step(self, batch, batch_idx):
        pred = self.model.predict(batch, self.diffusion, num_samples=self.config.eval_samples, generator=self._generator)
        y = self._target(batch)
        self._val.append((y.cpu(), pred["mean"].cpu()))
        self.log("val/mae", (pred["mean"] - y).abs().mean(), prog_bar=True, batch_size=y.shape[0], sync_dist=True)

    def configure_optimizers(self):
        from crysdiff.engine import configure_adamw

        head_params = [p for n, p in self.model.named_parameters() if not n.startswith("encoder.")]
        groups = [{"params": head_params}]
        if not self.config.freeze_encoder:
            groups.append({"params": list(self.model.encoder.parameters()), "lr": self.config.train.lr * self.config.encoder_lr_ratio})
        return configure_adamw(self, groups, self.config.train, self.total_steps or int(self.trainer.estimated_stepping_batches))


def split_holdout(val_idx: np.ndarray, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """The validation crystals ``val_idx`` split into those that choose (checkpoint, interval scale) and
    the seeded ``config.holdout_fraction`` held out of every choice (empty when it is 0)."""
    if config.holdout_fraction <= 0:
        return val_idx, val_idx[:0]
    if not 0 < config.holdout_fraction < 1:
        raise ValueError(f"holdout_fraction={config.holdout_fraction}: expected a share between 0 and 1")
    from crysdiff.splits import random_split

    keep, held = random_split(len(val_idx), (1 - config.holdout_fraction, config.holdout_fraction), seed=config.train.seed)
    return val_idx[keep], val_idx[held]


def _select_labelled(cache, indices: np.ndarray, target: str) -> tuple[np.ndarray, int]:
    column = cache.label_names.index(target)
    values = np.asarray(cache.labels[indices, column])
    keep = np.isfinite(values)
    return indices[keep], int((~keep).sum())


def _encoder_state(payload: dict) -> dict:
    return {k[len("encoder."):]: v for k, v in payload["state_dict"].items() if k.startswith("encoder.")}


def _initial_model(config: FinetuneConfig, init: str | None, mean: float, std: float,
                   lower_bound: float | None = None) -> tuple[FinetuneConfig, PropertyModel, dict]:
    """The model to fine-tune: encoder(s) from pre-training checkpoints, a whole fine-tuned model, or
    random; predicting no lower than ``lower_bound``, its interval not yet calibrated."""
    from crysdiff.checkpoint import load_checkpoint

    if init is None:
        if config.extra_init:
            raise ValueError(f"extra_init={config.extra_init} needs --init: the first of the two pre-training checkpoints")
        return config, build_property_model(config, mean, std, lower_bound), {"init": "random"}
    payload = load_checkpoint(init, kind=("pretrain", "finetune"))
    stored = payload["config"]
    config = replace(config, model=from_dict(DenoiserConfig, stored["model"]))
    if payload["kind"] == "pretrain":
        config = replace(config, structure_diffusion=from_dict(DiffusionConfig, stored.get("diffusion", {})))
        payloads, info = [payload], {"init": str(init), "init_kind": "pretrain"}
        if config.extra_init:
            extra = load_checkpoint(config.extra_init, kind="pretrain")
            extra_model = from_dict(DenoiserConfig, extra["config"]["model"])
            if extra_model != config.model:
                raise ValueError(f"{config.extra_init}: its encoder settings ({extra_model}) differ from those of {init} "
                                 f"({config.model}); extra_init needs two models pre-trained with the same model.* settings")
            payloads.append(extra)
            info["extra_init"] = str(config.extra_init)
        model = build_property_model(config, mean, std, lower_bound)
        encoders = model.encoder.encoders if config.extra_init else [model.encoder]
        for encoder, source in zip(encoders, payloads):
            encoder.load_state_dict(_encoder_state(source), strict=True)
        return config, model, info
    # refine a fine-tuned model (Table 2 protocol): keep its encoders, head, structure handling and
    # target standardisation, so the model is unchanged at step 0
    previous = payload_config(payload)
    if config.extra_init and config.extra_init != previous.extra_init:
        raise ValueError(f"extra_init applies to pre-training checkpoints only: {init} is a fine-tuned model that "
                         f"already holds its encoders")
    config = replace(config, head=previous.head, extra_init=previous.extra_init, fix_structure=previous.fix_structure,
                     structure_diffusion=previous.structure_diffusion)
    normalizer = payload["normalizer"]
    model = build_property_model(config, normalizer["mean"], normalizer["std"])
    model.load_state_dict(stored_state(payload), strict=True)
    model.calibrate(interval_scale=1.0, lower_bound=lower_bound)  # the bound of the new data; calibrated again after
    return config, model, {"init": str(init), "init_kind": "finetune", "init_target": normalizer.get("target")}


def _parity_plot(y, mean, lo, hi, path: Path, target: str, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if lo is not None and np.all(np.isfinite(lo)):
        # the exact mean (exact_mean) may lie outside the interval of a few samples: no negative bar
        bars = [np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)]
        ax.errorbar(y, mean, yerr=bars, fmt="none", ecolor="0.75", elinewidth=0.5, zorder=1)
    ax.scatter(y, mean, s=4, zorder=2)
    low, high = float(min(y.min(), mean.min())), float(max(y.max(), mean.max()))
    ax.plot([low, high], [low, high], "k--", lw=0.8)
    ax.set_xlabel(f"true {target} ({unit})" if unit else f"true {target}")
    ax.set_ylabel("predicted (mean, 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _final_validation(task: FinetuneTask, config: FinetuneConfig, val_cache, val_idx, edges, device, out_dir: Path,
                      unit: str, name: str = "val", calibrate: bool = True) -> dict:
    """Validate with the prediction settings users get (``report_samples``, the full chain), write
    ``{name}_predictions.csv`` and a parity plot, and with ``calibrate`` fit the model's interval on
    these crystals (unless ``config.calibrate=false``). Returns the metrics (with the scale when calibrated)."""
    import pandas as pd

    from crysdiff.loader import make_loader

    rows = []
    task.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(config.train.seed)
    for batch in make_loader(val_cache, val_idx, batch_size=config.train.batch_size, edges=edges, targets=[config.target]):
        pred = task.model.predict(batch.to(device), task.diffusion, num_samples=config.report_samples, generator=generator)
        pred = {k: v.cpu().numpy() for k, v in pred.items()}
        rows.append(pd.DataFrame({
            "id": [val_cache.id(int(i)) for i in batch.index], "y": batch.y[:, 0].double().numpy(),
            "mean": pred["mean"], "std": pred["std"], "p2.5": pred["p2.5"], "p97.5": pred["p97.5"],
        }))
    task.cpu()
    table = pd.concat(rows, ignore_index=True)
    table.to_csv(out_dir / f"{name}_predictions.csv", index=False)
    y, mean, low, high = (table[k].values for k in ("y", "mean", "p2.5", "p97.5"))
    metrics = regression_metrics(y, mean, low, high, table["std"].values)
    if task.model.is_diffusion and config.calibrate and calibrate:
        scale, calibration = conformal_interval_scale(y, mean, low, high)
        task.model.calibrate(interval_scale=scale, lower_bound=task.model.lower_bound)
        metrics.update(interval_scale=scale, coverage95_calibrated=calibration["coverage_after"], calibration=calibration)
    _parity_plot(y, mean, low, high, out_dir / ("parity.png" if name == "val" else f"parity_{name}.png"), config.target, unit)
    return metrics


def run_finetune(
    config: FinetuneConfig,
    init: str | None,
    train_sources: list[str],
    out_dir: str | Path,
    *,
    val_sources: list[str] | None = None,
    label_fraction: float = 1.0,
    resume: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Fine-tune on ``config.target`` and write ``OUT/model.ckpt``, ``val_metrics.json``,
    ``val_predictions.csv`` and ``parity.png``. Returns the validation metrics."""
    from crysdiff.batching import EdgeSettings
    from crysdiff.cache import load_dataset
    from crysdiff.checkpoint import save_checkpoint
    from crysdiff.crystal import ValidationSettings
    from crysdiff.domain import training_summary
    from crysdiff.engine import last_checkpoint, plot_curves
    from crysdiff.fitting import fit_task
    from crysdiff.splits import label_fraction as subsample
    from crysdiff.splits import random_split

    if not config.target:
        raise ValueError("no target given: pass --target NAME (a label column of the data)")
    out_dir = Path(out_dir)
    resume_from = last_checkpoint(out_dir) if resume else None  # a refused run folder stops here, before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    settings = ValidationSettings(min_distance=config.data.min_distance, max_atoms=config.data.max_atoms)
    train_cache = load_dataset(train_sources, settings=settings, cell=config.data.cell, progress=progress, workers=workers)
    if config.target not in train_cache.label_names:
        raise ValueError(f"target {config.target!r} is not a label of {', '.join(map(str, train_sources))} "
                         f"(labels found: {', '.join(train_cache.label_names) or 'none'})")
    train_idx, dropped = _select_labelled(train_cache, np.arange(len(train_cache)), config.target)
    dropped_val = 0
    if val_sources:
        val_cache = load_dataset(val_sources, settings=settings, cell=config.data.cell, progress=progress, workers=workers)
        if config.target not in val_cache.label_names:
            raise ValueError(f"target {config.target!r} is not a label of the validation data {', '.join(map(str, val_sources))}")
        val_idx, dropped_val = _select_labelled(val_cache, np.arange(len(val_cache)), config.target)
    else:
        val_cache = train_cache
        fraction = config.data.val_fraction
        a, b = random_split(len(train_idx), (1 - fraction, fraction), seed=config.train.seed)
        train_idx, val_idx = train_idx[a], train_idx[b]
    val_idx, holdout_idx = split_holdout(val_idx, config)
    if len(train_idx) == 0:
        raise ValueError(f"no training crystal has a value for {config.target!r}")
    if len(val_idx) == 0:
        from crysdiff.notices import warn_once

        given = "the --val data has none" if val_sources else \
            f"data.val_fraction={config.data.val_fraction} of {len(train_idx)} labelled crystals is none"
        warn_once(f"no validation crystals ({given}): there will be no validation MAE, the best checkpoint is the "
                  "last one, and the 95% interval is not calibrated (pass --val or a larger data.val_fraction)")
    train_idx = subsample(train_idx, label_fraction, seed=config.train.seed) if label_fraction < 1 else train_idx
    column = train_cache.label_names.index(config.target)
    y_train = np.asarray(train_cache.labels[train_idx, column], dtype=np.float64)
    mean, std = float(y_train.mean()), float(y_train.std() or 1.0)
    lower_bound = 0.0 if y_train.min() >= 0 else None  # a non-negative target never gets negative predictions
    config, model, init_info = _initial_model(config, init, mean, std, lower_bound)
    save_yaml(config, out_dir / "config.yaml")
    unit = train_cache.units.get(config.target, "")

    task = FinetuneTask(config, model)
    edges = EdgeSettings(max_dense_atoms=config.data.max_dense_atoms, knn_neighbors=config.data.knn_neighbors)
    trainer, _, fit_seconds = fit_task(task, config.train, out_dir, (train_cache, train_idx), (val_cache, val_idx), edges,
                                       monitor="val/mae", progress=progress, resume=resume, resume_from=resume_from,
                                       targets=[config.target])

    # final validation with the prediction settings users get (S samples, full chain)
    metrics: dict = {"target": config.target, "unit": unit, "train_count": int(len(train_idx)),
                     "train_missing_dropped": dropped, "val_missing_dropped": dropped_val, **init_info}
    normalizer = {"target": config.target, "unit": unit, "mean": mean, "std": std, "lower_bound": lower_bound}
    if init_info.get("init_kind") == "finetune":
        normalizer.update(mean=float(model.y_mean), std=float(model.y_std))
    if len(val_idx):
        device = trainer.strategy.root_device  # Lightning moved the task back to the CPU when fit ended
        metrics["val"] = _final_validation(task, config, val_cache, val_idx, edges, device, out_dir, unit)
        if "interval_scale" in metrics["val"]:
            normalizer["interval_scale"] = metrics["val"]["interval_scale"]
    if len(holdout_idx):  # scored as shipped: the best checkpoint and the scale chosen without these crystals
        metrics["holdout"] = _final_validation(task, config, val_cache, holdout_idx, edges, trainer.strategy.root_device,
                                               out_dir, unit, name="holdout", calibrate=False)
    save_checkpoint(
        out_dir / "model.ckpt", kind="finetune", config=to_dict(config), state_dict=task.model.state_dict(),
        normalizer=normalizer, metrics={**metrics.get("val", {}), **({"holdout": metrics["holdout"]} if "holdout" in metrics else {})},
        data={"train_sources": [str(s) for s in train_sources], "train_count": int(len(train_idx)),
              "label_fraction": label_fraction, "val_count": int(len(val_idx)), "holdout_count": int(len(holdout_idx)),
              "domain": training_summary(*train_cache.gather(train_idx))},  # for predict's per-row flags
        training={"epochs": int(trainer.current_epoch), "steps": int(trainer.global_step), "seconds": fit_seconds,
                  "device": str(trainer.strategy.root_device), "torch_threads": torch.get_num_threads()},
    )
    (out_dir / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves(out_dir, ["train/loss", "val/mae"], title=f"fine-tuning on {config.target}")
    return metrics
