"""Pre-training by structure reconstruction (paper Alg. 1): the task and the run.

:class:`PretrainTask` wraps the denoiser and the joint diffusion for Lightning ("batch in, loss
out"); :func:`run_pretrain` loads the data through the cache, trains, and exports a self-describing
checkpoint ``OUT/model.ckpt`` that fine-tuning, sampling and CSP evaluation read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch

from crysdiff.checkpoint import load_checkpoint, save_checkpoint
from crysdiff.cells import stored_data_config
from crysdiff.config import DataConfig, TrainConfig, from_dict, save_yaml, to_dict
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig
from crysdiff.diffusion import DiffusionConfig, JointDiffusion
from crysdiff.engine import configure_adamw, last_checkpoint, plot_curves
from crysdiff.fitting import fit_task

__all__ = ["PretrainConfig", "PretrainTask", "run_pretrain", "init_config", "load_pretrained"]


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pre-training run needs (written to ``OUT/config.yaml`` and into the checkpoint)."""

    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, max_epochs=100, batch_size=64))
    data: DataConfig = field(default_factory=DataConfig)


class PretrainTask(L.LightningModule):
    """Alg. 1 as a Lightning module: ``loss = L_L + L_F`` from :class:`JointDiffusion`.

    With ``diffusion.mode=lattice`` (or ``coords``) the loss has one term and the other head of the
    denoiser gets no gradient: on several GPUs use ``train.strategy=ddp_find_unused_parameters_true``.
    """

    def __init__(self, config: PretrainConfig):
        super().__init__()
        self.config = config
        self.model = CrysDiffDenoiser(config.model)
        self.diffusion = JointDiffusion(config.diffusion)
        self._val_generator: torch.Generator | None = None
        self.total_steps: int | None = None  # the schedule's length, set by run_pretrain (see planned_steps)

    def on_fit_start(self) -> None:
        self.diffusion.to(self.device)

    def training_step(self, batch, batch_idx):
        out = self.diffusion.loss(self.model, batch)
        size = int(batch.num_atoms.shape[0])
        for key, value in out.items():  # loss_lattice and/or loss_coords, as diffusion.mode has them
            self.log(f"train/{key}", value, prog_bar=key == "loss", batch_size=size)
        return out["loss"]

    def on_validation_epoch_start(self) -> None:
        # the same noise every validation pass, so validation losses are comparable across epochs
        self.diffusion.to(self.device)
        self._val_generator = torch.Generator(device=self.device).manual_seed(12345)

    def validation_step(self, batch, batch_idx):
        out = self.diffusion.loss(self.model, batch, generator=self._val_generator)
        size = int(batch.num_atoms.shape[0])
        for key, value in out.items():
            self.log(f"val/{key}", value, prog_bar=key == "loss", batch_size=size, sync_dist=True)

    def configure_optimizers(self):
        total = self.total_steps or int(self.trainer.estimated_stepping_batches)
        return configure_adamw(self, self.parameters(), self.config.train, total)


def _summary(cache, indices) -> dict:
    _, _, lattices, counts = cache.gather(indices)
    per_atom = np.abs(np.linalg.det(lattices)) / counts  # [B] Å³ per atom: the range samples are checked against
    return {
        "sources": list(cache.sources),
        "num_crystals": int(len(indices)),
        "num_atoms_total": int(np.asarray(cache.num_atoms)[indices].sum()),
        "volume_per_atom": {"min": float(per_atom.min()), "max": float(per_atom.max())} if len(indices) else None,
    }


def run_pretrain(
    config: PretrainConfig,
    train_sources: list[str],
    out_dir: str | Path,
    *,
    val_sources: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    workers: int | None = None,
    init: str | Path | None = None,
) -> Path:
    """Train a denoiser on ``train_sources`` (labels ignored) and write ``OUT/model.ckpt``.

    Without ``val_sources`` a seeded ``data.val_fraction`` of the training crystals is held out.
    With ``resume`` the run continues from ``OUT/checkpoints/last.ckpt``. With ``init`` (a
    pre-training checkpoint) the denoiser starts from its weights, with a fresh optimizer and
    learning-rate schedule: pre-training continued, on the same corpus or on another one. Its
    ``model`` settings must equal ``config.model`` (see :func:`init_config`).
    """
    from crysdiff.batching import EdgeSettings
    from crysdiff.cache import load_dataset
    from crysdiff.crystal import ValidationSettings
    from crysdiff.splits import random_split

    start = _read_init(config, init) if init else None  # before anything is written: a bad --init leaves OUT as it was
    out_dir = Path(out_dir)
    resume_from = last_checkpoint(out_dir) if resume else None  # a refused run folder stops here, before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, out_dir / "config.yaml")
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    settings = ValidationSettings(min_distance=config.data.min_distance, max_atoms=config.data.max_atoms)
    edges = EdgeSettings(max_dense_atoms=config.data.max_dense_atoms, knn_neighbors=config.data.knn_neighbors)
    train_cache = load_dataset(train_sources, settings=settings, cell=config.data.cell, progress=progress, workers=workers)
    if val_sources:
        val_cache = load_dataset(val_sources, settings=settings, cell=config.data.cell, progress=progress, workers=workers)
        train_idx, val_idx = np.arange(len(train_cache)), np.arange(len(val_cache))
    else:
        val_cache = train_cache
        fraction = config.data.val_fraction
        train_idx, val_idx = random_split(len(train_cache), (1 - fraction, fraction), seed=config.train.seed)
    task = PretrainTask(config)
    if start:
        task.model.load_state_dict(start[0], strict=True)
    trainer, val_loader, fit_seconds = fit_task(task, config.train, out_dir, (train_cache, train_idx),
                                                (val_cache, val_idx), edges, monitor="val/loss", progress=progress,
                                                resume=resume, resume_from=resume_from)
    if val_loader is not None:  # the weights that are exported, validated once more (logged to metrics.csv)
        trainer.validate(task, val_loader, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    path = save_checkpoint(
        out_dir / "model.ckpt",
        kind="pretrain",
        config=to_dict(config),
        state_dict=task.model.state_dict(),
        buffers=task.diffusion.state_dict(),
        data={"train": _summary(train_cache, train_idx), "val": _summary(val_cache, val_idx)},
        metrics=metrics,
        training={"epochs": int(trainer.current_epoch), "steps": int(trainer.global_step), "seconds": fit_seconds,
                  "device": str(trainer.strategy.root_device), "torch_threads": torch.get_num_threads(),
                  **({"init": start[1]} if start else {})},
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves(out_dir, ["train/loss", "val/loss", "val/loss_lattice", "val/loss_coords"], title="pre-training loss")
    return path


def init_config(init: str | Path, overrides: list[str] | None = None, base: PretrainConfig | None = None) -> PretrainConfig:
    """The config of a run that continues ``init``: ``base`` (default: the defaults) with the model
    and diffusion settings of ``init``, then ``overrides``. A ``model.*`` override that changes the
    network is refused by :func:`run_pretrain`, since the weights would not fit."""
    from dataclasses import replace

    from crysdiff.config import apply_overrides

    stored = from_dict(PretrainConfig, stored_data_config(load_checkpoint(init, kind="pretrain")["config"]))
    config = replace(base or PretrainConfig(), model=stored.model, diffusion=stored.diffusion)
    return apply_overrides(config, list(overrides or []))


def _read_init(config: PretrainConfig, init: str | Path) -> tuple[dict, dict]:
    """The denoiser weights of ``init`` (checked to fit ``config.model``) and, for the record, the
    checkpoint's path and the steps (and seconds, where recorded) of all its stages."""
    payload = load_checkpoint(init, kind="pretrain")
    stored = from_dict(PretrainConfig, stored_data_config(payload["config"]))
    if stored.model != config.model:
        mine, theirs = to_dict(config.model), to_dict(stored.model)
        diff = ", ".join(f"model.{k}={mine[k]!r} (checkpoint: {theirs[k]!r})" for k in mine if mine[k] != theirs.get(k))
        raise ValueError(f"{init}: cannot continue this pre-training with another network: {diff}")
    training, earlier = payload.get("training", {}), payload.get("training", {}).get("init", {})
    record = {"path": str(init), "steps": int(training.get("steps", 0)) + int(earlier.get("steps", 0))}
    if "seconds" in training and ("seconds" in earlier or not earlier):  # older checkpoints lack the time
        record["seconds"] = float(training["seconds"]) + float(earlier.get("seconds", 0.0))
    return payload["state_dict"], record


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CrysDiffDenoiser, JointDiffusion, PretrainConfig, dict]:
    """Model, diffusion (with its stored constants), config and the raw payload of a pre-training checkpoint."""
    payload = load_checkpoint(path, kind="pretrain")
    config = from_dict(PretrainConfig, stored_data_config(payload["config"]))
    model = CrysDiffDenoiser(config.model)
    model.load_state_dict(payload["state_dict"], strict=True)
    diffusion = JointDiffusion(config.diffusion)
    if payload.get("buffers"):
        diffusion.load_state_dict(payload["buffers"])
    return model.to(map_location).eval(), diffusion.to(map_location), config, payload
