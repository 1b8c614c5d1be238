"""Fine-tuning (paper Alg. 2) and prediction with uncertainty (Alg. 3).

A :class:`PropertyModel` is the pre-trained encoder plus a property head (composition, not a copied
class): the encoder reads the clean structure once, its atom states are mean-pooled into
``crystal_features`` ``[B, H]``, and the head runs the CARD chain on the standardised target.

* Training (Alg. 2): ``y_0`` standardised with the training mean and std (stored in the
  checkpoint), ``t ~ U{1..T}``, ``y_t = √ᾱ_t y_0 + (1 − √ᾱ_t) μ + √(1 − ᾱ_t) ε`` and the loss is
  ``|ε − ε̂(z, y_t, μ, t)|²``. The prior mean ``μ`` is the training mean (``0`` in standardised
  units, the paper) or CARD's learned prior ``f(x)`` (a regression head trained with L1 alongside).
* Inference (Alg. 3): the encoder runs once per crystal; the ``T``-step chain runs for all ``S``
  samples through the head only (for affine heads the head runs once per crystal and step, see
  :meth:`crysdiff.card.PropertyDiffusion.sample_affine`). The mean of the samples is the
  prediction; their standard deviation and 2.5/97.5 percentiles are the uncertainty.
* ``head.kind = "regression"``: the plain L1 regression baseline on the same encoder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn

from crysdiff.card import PropertyDiffusion, PropertyDiffusionConfig
from crysdiff.config import DataConfig, TrainConfig, from_dict, save_yaml, to_dict
from crysdiff.denoiser import CrysDiffEncoder, DenoiserConfig
from crysdiff.heads import HeadConfig, RegressionHead, build_noise_head

__all__ = ["FinetuneConfig", "PropertyModel", "FinetuneTask", "pool_mean", "run_finetune", "build_property_model", "regression_metrics"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings.

    Attributes:
        target: the label column to learn (e.g. ``formation_energy_per_atom``).
        model: the encoder's config (replaced by the ``--init`` checkpoint's own when there is one).
        head: the property head (``kind="card"`` default; ``"eq4"``, ``"card_mlp"``, ``"regression"``).
        property: the CARD schedule on the target.
        freeze_encoder: keep the pre-trained encoder fixed (ablation "without updating the encoder").
        encoder_lr_ratio: the encoder's learning rate relative to the head's.
        eval_samples: samples per crystal when validating (prediction uses ``--samples``).
    """

    target: str = ""
    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    property: PropertyDiffusionConfig = field(default_factory=PropertyDiffusionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, max_epochs=30, warmup_steps=100))
    data: DataConfig = field(default_factory=DataConfig)
    freeze_encoder: bool = False
    encoder_lr_ratio: float = 1.0
    eval_samples: int = 20


def pool_mean(node_features: torch.Tensor, batch_index: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """``[B, H]`` mean of ``[N, H]`` atom states per crystal."""
    out = torch.zeros(num_crystals, node_features.shape[1], dtype=node_features.dtype, device=node_features.device)
    out.index_add_(0, batch_index, node_features)
    counts = torch.bincount(batch_index, minlength=num_crystals).clamp(min=1).to(node_features.dtype)
    return out / counts[:, None]


class PropertyModel(nn.Module):
    """Encoder + property head, with the target's standardisation as buffers.

    Args:
        encoder: a module ``(batch, frac_coords, lattice, t) -> [N, H]`` (the pre-trained
            :class:`crysdiff.denoiser.CrysDiffEncoder`).
        hidden_dim: ``H``.
        head: the head config; ``mean``/``std``: the training target statistics.
        lower_bound: if set, predicted samples are clipped from below at this value (original units)
            before the mean, spread and interval are taken: ``0`` for targets whose training values
            are all non-negative (band gaps, moduli), so no prediction or interval is unphysical.
    """

    def __init__(self, encoder: nn.Module, hidden_dim: int, head: HeadConfig, mean: float = 0.0, std: float = 1.0,
                 lower_bound: float | None = None):
        super().__init__()
        self.lower_bound = lower_bound
        self.encoder = encoder
        self.head_config = head
        if head.kind == "regression":
            self.head = RegressionHead(hidden_dim, head.hidden_dim, head.dropout)
        else:
            self.head = build_noise_head(hidden_dim, head)
        self.prior = RegressionHead(hidden_dim, head.hidden_dim, head.dropout) if head.prior == "learned" else None
        self.register_buffer("y_mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("y_std", torch.tensor(float(std), dtype=torch.float64))

    @property
    def is_diffusion(self) -> bool:
        return self.head_config.kind != "regression"

    def encode(self, batch) -> torch.Tensor:
        """``crystal_features`` ``[B, H]`` of the clean structures (time step 0)."""
        num_crystals = batch.num_atoms.shape[0]
        t = torch.zeros(num_crystals, dtype=torch.long, device=batch.frac_coords.device)
        nodes = self.encoder(batch, batch.frac_coords, batch.lattice, t)  # [N, H]
        return pool_mean(nodes, batch.batch, num_crystals)

    def standardise(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean.to(y.dtype)) / self.y_std.to(y.dtype)

    def destandardise(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_std.to(y.dtype) + self.y_mean.to(y.dtype)

    def prior_mean(self, features: torch.Tensor) -> torch.Tensor:
        """``μ`` ``[B]`` in standardised units: 0 (the training mean) or the learned ``f(x)``."""
        if self.prior is None:
            return torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        return self.prior(features)

    def loss(self, batch, y: torch.Tensor, diffusion: PropertyDiffusion, generator: torch.Generator | None = None) -> dict:
        """Alg. 2 for targets ``y`` ``[B]`` (original units). Returns ``loss`` and its parts."""
        features = self.encode(batch)
        y0 = self.standardise(y).to(features.dtype)
        if not self.is_diffusion:
            loss = (self.head(features) - y0).abs().mean()
            return {"loss": loss, "loss_regression": loss.detach()}
        out = {}
        mu = self.prior_mean(features)
        loss = 0.0
        if self.prior is not None:
            prior_loss = (mu - y0).abs().mean()
            out["loss_prior"] = prior_loss.detach()
            loss = loss + prior_loss
            mu = mu.detach()  # the noise head conditions on f(x); f(x) learns from its own L1 loss
        t = diffusion.sample_timesteps(y0.shape[0], device=y0.device, generator=generator)
        noise = torch.randn(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
        y_t = diffusion.add_noise(y0, mu, t, noise)
        eps_hat = self.head(features, y_t, mu, t)
        noise_loss = ((eps_hat - noise) ** 2).mean()
        out["loss_noise"] = noise_loss.detach()
        out["loss"] = loss + noise_loss
        return out

    @torch.no_grad()
    def predict(self, batch, diffusion: PropertyDiffusion, num_samples: int = 100, generator: torch.Generator | None = None,
                keep_samples: bool = False) -> dict[str, torch.Tensor]:
        """Predictions in original units: ``mean``, ``std``, ``p2.5``, ``p97.5`` ``[B]`` (and ``samples`` ``[B, S]``)."""
        features = self.encode(batch)  # the structure is fixed: encode once
        if not self.is_diffusion:
            mean = self.destandardise(self.head(features).double())
            if self.lower_bound is not None:
                mean = mean.clamp_min(self.lower_bound)
            nan = torch.full_like(mean, float("nan"))
            return {"mean": mean, "std": nan, "p2.5": nan, "p97.5": nan}
        mu = self.prior_mean(features).double()
        if hasattr(self.head, "chain_coefficients"):
            coeffs = self.head.chain_coefficients(features, diffusion.timesteps).double()  # [B, T+1, 3]
            samples = diffusion.sample_affine(coeffs, mu, num_samples, generator=generator)
        else:
            def eps_model(y_t, t):  # [B, S] -> [B, S]: the head on every sample, structure fixed
                batch_size, samples_per = y_t.shape
                z = features[:, None, :].expand(-1, samples_per, -1).reshape(batch_size * samples_per, -1)
                t_vec = torch.full((batch_size * samples_per,), t, dtype=torch.long, device=y_t.device)
                mu_flat = mu[:, None].expand(-1, samples_per).reshape(-1).to(z.dtype)
                return self.head(z, y_t.reshape(-1).to(z.dtype), mu_flat, t_vec).reshape(batch_size, samples_per).double()

            samples = diffusion.sample(eps_model, mu, num_samples, generator=generator)
        samples = self.destandardise(samples)  # [B, S]
        if self.lower_bound is not None:
            samples = samples.clamp_min(self.lower_bound)
        out = {
            "mean": samples.mean(dim=1),
            "std": samples.std(dim=1) if num_samples > 1 else torch.zeros(samples.shape[0], dtype=samples.dtype),
            "p2.5": torch.quantile(samples, 0.025, dim=1),
            "p97.5": torch.quantile(samples, 0.975, dim=1),
        }
        if keep_samples:
            out["samples"] = samples
        return out


# --- the Lightning task and the run -----------------------------------------------------------------


def build_property_model(config: FinetuneConfig, mean: float = 0.0, std: float = 1.0,
                         lower_bound: float | None = None) -> PropertyModel:
    return PropertyModel(CrysDiffEncoder(config.model), config.model.hidden_dim, config.head, mean=mean, std=std,
                         lower_bound=lower_bound)


def regression_metrics(y: np.ndarray, mean: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None,
                       std: np.ndarray | None = None) -> dict[str, float]:
    """MAE, RMSE, R², and (when intervals are given) the 95% interval coverage and mean predicted std."""
    y, mean = np.asarray(y, float), np.asarray(mean, float)
    error = mean - y
    out = {
        "count": int(y.size),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": float(1 - np.sum(error**2) / max(np.sum((y - y.mean()) ** 2), 1e-300)),
    }
    if lo is not None and hi is not None and np.all(np.isfinite(lo)):
        out["coverage95"] = float(np.mean((y >= lo) & (y <= hi)))
    if std is not None and np.all(np.isfinite(std)):
        out["mean_std"] = float(np.mean(std))
        out["std_abs_error_corr"] = float(np.corrcoef(std, np.abs(error))[0, 1]) if y.size > 2 else math.nan
    return out


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
        return configure_adamw(self, groups, self.config.train, int(self.trainer.estimated_stepping_batches))


def _select_labelled(cache, indices: np.ndarray, target: str) -> tuple[np.ndarray, int]:
    column = cache.label_names.index(target)
    values = np.asarray(cache.labels[indices, column])
    keep = np.isfinite(values)
    return indices[keep], int((~keep).sum())


def _initial_model(config: FinetuneConfig, init: str | None, mean: float, std: float) -> tuple[FinetuneConfig, PropertyModel, dict]:
    """The model to fine-tune: encoder from a pre-training checkpoint, a whole fine-tuned model, or random."""
    from crysdiff.checkpoint import load_checkpoint

    if init is None:
        return config, build_property_model(config, mean, std), {"init": "random"}
    payload = load_checkpoint(init, kind=("pretrain", "finetune"))
    stored = payload["config"]
    config = replace(config, model=from_dict(DenoiserConfig, stored["model"]))
    if payload["kind"] == "pretrain":
        model = build_property_model(config, mean, std)
        encoder_state = {k[len("encoder."):]: v for k, v in payload["state_dict"].items() if k.startswith("encoder.")}
        model.encoder.load_state_dict(encoder_state, strict=True)
        return config, model, {"init": str(init), "init_kind": "pretrain"}
    # refine a fine-tuned model (Table 2 protocol): keep its head and its target standardisation
    previous = from_dict(FinetuneConfig, stored)
    config = replace(config, head=previous.head)
    normalizer = payload["normalizer"]
    model = build_property_model(config, normalizer["mean"], normalizer["std"])
    model.load_state_dict(payload["state_dict"], strict=True)
    return config, model, {"init": str(init), "init_kind": "finetune", "init_target": normalizer.get("target")}


def _parity_plot(y, mean, lo, hi, path: Path, target: str, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if lo is not None and np.all(np.isfinite(lo)):
        ax.errorbar(y, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor="0.75", elinewidth=0.5, zorder=1)
    ax.scatter(y, mean, s=4, zorder=2)
    low, high = float(min(y.min(), mean.min())), float(max(y.max(), mean.max()))
    ax.plot([low, high], [low, high], "k--", lw=0.8)
    ax.set_xlabel(f"true {target} ({unit})" if unit else f"true {target}")
    ax.set_ylabel("predicted (mean, 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    import pandas as pd

    from crysdiff.batching import EdgeSettings
    from crysdiff.cache import load_dataset
    from crysdiff.checkpoint import save_checkpoint
    from crysdiff.crystal import ValidationSettings
    from crysdiff.engine import last_checkpoint, make_trainer, plot_curves
    from crysdiff.loader import make_loader
    from crysdiff.splits import label_fraction as subsample
    from crysdiff.splits import random_split

    if not config.target:
        raise ValueError("no target given: pass --target NAME (a label column of the data)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    settings = ValidationSettings(min_distance=config.data.min_distance, max_atoms=config.data.max_atoms)
    train_cache = load_dataset(train_sources, settings=settings, progress=progress, workers=workers)
    if config.target not in train_cache.label_names:
        raise ValueError(f"target {config.target!r} is not a label of {', '.join(map(str, train_sources))} "
                         f"(labels found: {', '.join(train_cache.label_names) or 'none'})")
    train_idx, dropped = _select_labelled(train_cache, np.arange(len(train_cache)), config.target)
    dropped_val = 0
    if val_sources:
        val_cache = load_dataset(val_sources, settings=settings, progress=progress, workers=workers)
        if config.target not in val_cache.label_names:
            raise ValueError(f"target {config.target!r} is not a label of the validation data {', '.join(map(str, val_sources))}")
        val_idx, dropped_val = _select_labelled(val_cache, np.arange(len(val_cache)), config.target)
    else:
        val_cache = train_cache
        fraction = config.data.val_fraction
        a, b = random_split(len(train_idx), (1 - fraction, fraction), seed=config.train.seed)
        train_idx, val_idx = train_idx[a], train_idx[b]
    if len(train_idx) == 0:
        raise ValueError(f"no training crystal has a value for {config.target!r}")
    train_idx = subsample(train_idx, label_fraction, seed=config.train.seed) if label_fraction < 1 else train_idx
    column = train_cache.label_names.index(config.target)
    y_train = np.asarray(train_cache.labels[train_idx, column], dtype=np.float64)
    mean, std = float(y_train.mean()), float(y_train.std() or 1.0)
    lower_bound = 0.0 if y_train.min() >= 0 else None  # a non-negative target never gets negative predictions
    config, model, init_info = _initial_model(config, init, mean, std)
    model.lower_bound = lower_bound
    save_yaml(config, out_dir / "config.yaml")
    unit = train_cache.units.get(config.target, "")

    task = FinetuneTask(config, model)
    edges = EdgeSettings(max_dense_atoms=config.data.max_dense_atoms, knn_neighbors=config.data.knn_neighbors)
    trainer = make_trainer(config.train, out_dir, monitor="val/mae", progress=progress, has_validation=len(val_idx) > 0)
    loader_args = dict(batch_size=config.train.batch_size, edges=edges, num_workers=config.train.num_workers,
                       max_atoms_per_batch=config.train.max_atoms_per_batch or None, targets=[config.target],
                       rank=trainer.global_rank, world_size=trainer.world_size)
    train_loader = make_loader(train_cache, train_idx, shuffle=True, seed=config.train.seed, **loader_args)
    val_loader = make_loader(val_cache, val_idx, shuffle=False, **loader_args) if len(val_idx) else None
    started = time.perf_counter()
    trainer.fit(task, train_loader, val_loader, ckpt_path=last_checkpoint(out_dir) if resume else None)
    fit_seconds = time.perf_counter() - started
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and Path(best).is_file():
        task.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])

    # final validation with the prediction settings users get (S samples, full chain)
    metrics: dict = {"target": config.target, "unit": unit, "train_count": int(len(train_idx)),
                     "train_missing_dropped": dropped, "val_missing_dropped": dropped_val, **init_info}
    normalizer = {"target": config.target, "unit": unit, "mean": mean, "std": std, "lower_bound": lower_bound}
    if init_info.get("init_kind") == "finetune":
        normalizer.update(mean=float(model.y_mean), std=float(model.y_std))
    if len(val_idx):
        rows = []
        task.model.eval()
        generator = torch.Generator().manual_seed(config.train.seed)
        for batch in make_loader(val_cache, val_idx, batch_size=config.train.batch_size, edges=edges, targets=[config.target]):
            pred = task.model.predict(batch, task.diffusion, num_samples=max(config.eval_samples, 50), generator=generator)
            rows.append(pd.DataFrame({
                "id": [val_cache.id(int(i)) for i in batch.index], "y": batch.y[:, 0].double().numpy(),
                "mean": pred["mean"].numpy(), "std": pred["std"].numpy(),
                "p2.5": pred["p2.5"].numpy(), "p97.5": pred["p97.5"].numpy(),
            }))
        table = pd.concat(rows, ignore_index=True)
        table.to_csv(out_dir / "val_predictions.csv", index=False)
        metrics["val"] = regression_metrics(table["y"].values, table["mean"].values, table["p2.5"].values,
                                            table["p97.5"].values, table["std"].values)
        _parity_plot(table["y"].values, table["mean"].values, table["p2.5"].values, table["p97.5"].values,
                     out_dir / "parity.png", config.target, unit)
    save_checkpoint(
        out_dir / "model.ckpt", kind="finetune", config=to_dict(config), state_dict=task.model.state_dict(),
        normalizer=normalizer, metrics=metrics.get("val", {}),
        data={"train_sources": [str(s) for s in train_sources], "train_count": int(len(train_idx)),
              "label_fraction": label_fraction, "val_count": int(len(val_idx))},
        training={"epochs": int(trainer.current_epoch), "steps": int(trainer.global_step), "seconds": fit_seconds,
                  "device": str(task.device), "torch_threads": torch.get_num_threads()},
    )
    (out_dir / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_curves(out_dir, ["train/loss", "val/mae"], title=f"fine-tuning on {config.target}")
    return metrics
