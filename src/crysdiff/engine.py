"""The training engine: Lightning's ``Trainer`` set up the same way for every crysdiff run.

The engine only sees "batch in, loss out": a task (a ``LightningModule`` such as
:class:`crysdiff.pretrain.PretrainTask` or :class:`crysdiff.finetune.FinetuneTask`) computes its
loss; this module owns the optimiser and schedule, logging (CSV always, TensorBoard when installed),
the progress bar, checkpoints for resuming (``OUT/checkpoints/last.ckpt``), time limits and the
multi-GPU / multi-node setup, and draws the loss curves when a run ends.

Data order is crysdiff's own: the batch samplers shard by ``trainer.global_rank`` /
``trainer.world_size`` themselves, so Lightning is told not to replace them.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import lightning as L
import torch

from crysdiff.config import TrainConfig
from crysdiff.notices import warn_once

__all__ = ["make_trainer", "configure_adamw", "plot_curves", "last_checkpoint", "resolve_precision", "ema_callback",
           "RandomState", "planned_steps"]


def _timer_progress(module, budget_seconds: float) -> float:
    """Fraction of a wall-clock budget used so far by the trainer's training stage (Lightning's
    ``Timer`` callback, whose elapsed time survives ``--resume``); 0 without a budget or a timer."""
    from lightning.pytorch.callbacks import Timer

    trainer = getattr(module, "_trainer", None)
    if budget_seconds <= 0 or trainer is None:
        return 0.0
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return timer.time_elapsed("train") / budget_seconds if timer is not None else 0.0


def _adamw(params, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with ``config``'s settings; fused (``config.fused_optimizer``) where torch supports it."""
    params = list(params)
    if config.fused_optimizer:
        try:
            return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
        except (RuntimeError, ValueError) as error:  # no fused kernel for this device or dtype
            warn_once(f"train.fused_optimizer: {error}; using the plain AdamW")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def configure_adamw(module: torch.nn.Module, params, config: TrainConfig, total_steps: int):
    """AdamW with linear warm-up then cosine decay to ``lr * min_lr_ratio``.

    The decay runs over ``total_steps``; with ``config.anneal_over_time`` and a
    ``config.max_time_minutes`` cap, over the wall-clock budget when that ends first
    (``progress = max(step fraction, time fraction)``, the time read from the trainer's ``Timer``,
    so a resumed run continues the schedule where it stopped)."""
    optimizer = _adamw(params, config)
    warmup = max(0, int(config.warmup_steps))
    total = max(total_steps, warmup + 1)
    budget_seconds = 60.0 * float(config.max_time_minutes or 0.0) if config.anneal_over_time else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = max((step - warmup) / max(1, total - warmup), _timer_progress(module, budget_seconds))
        progress = min(1.0, progress)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def planned_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    """The optimiser steps a run makes: ``max_steps`` or ``max_epochs`` passes over ``batches_per_epoch``
    batches, whichever ends first (Lightning's ``estimated_stepping_batches``, computed without it: that
    property loads the training data before a resumed run's loader position is restored, so the
    resumed run would start its epoch again)."""
    bounds = [config.max_steps] if config.max_steps > 0 else []
    if config.max_epochs > 0:
        bounds.append(config.max_epochs * max(1, batches_per_epoch))
    if not bounds:
        raise ValueError("the learning-rate schedule needs train.max_steps or train.max_epochs (max_time_minutes is a cap)")
    return int(min(bounds))


def resolve_precision(config: TrainConfig) -> str:
    """``config.precision``, with ``"auto"`` made ``bf16-mixed`` on a bf16-capable CUDA GPU, else ``32-true``."""
    if config.precision != "auto":
        return config.precision
    on_gpu = config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def ema_callback(decay: float):
    """Lightning's EMA callback with a warmed-up decay (see ``TrainConfig.ema_decay``), or ``None``."""
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"train.ema_decay must be in (0, 1) or 0 for off, found {decay}")
    from lightning.pytorch.callbacks import WeightAveraging
    from lightning.pytorch.trainer.states import TrainerFn

    class _EMA(WeightAveraging):
        def on_fit_start(self, trainer, pl_module):
            self._averaged_in = False
            super().on_fit_start(trainer, pl_module)

        def on_train_end(self, trainer, pl_module):
            for callback in trainer.checkpoint_callbacks:  # the final "last" save, before the average is copied in
                if hasattr(callback, "save_last_now"):
                    callback.save_last_now(trainer)
            super().on_train_end(trainer, pl_module)
            self._averaged_in = True

        def on_fit_end(self, trainer, pl_module):
            # a resumed run that had nothing left to train skips on_train_end: the model still holds
            # the raw weights it was resumed with; it ends with the average like any other run
            if not getattr(self, "_averaged_in", True) and self._average_model is not None:
                self._copy_average_to_current(pl_module)
            super().on_fit_end(trainer, pl_module)

        # Lightning swaps the averaged weights in for every validation loop. Only do that while
        # fitting: a later ``trainer.validate`` must see the weights the caller loaded (the export).
        def on_validation_epoch_start(self, trainer, pl_module):
            if trainer.state.fn == TrainerFn.FITTING:
                super().on_validation_epoch_start(trainer, pl_module)

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.state.fn == TrainerFn.FITTING:
                super().on_validation_epoch_end(trainer, pl_module)

    def ema(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        beta = min(decay, (1.0 + n) / (10.0 + n))
        return averaged + (current - averaged) * (1.0 - beta)

    # buffers (diffusion constants, target statistics) are constants: they are not averaged
    return _EMA(avg_fn=ema, use_buffers=False)


class RandomState(L.Callback):
    """Puts the global random states (Python, NumPy, torch, CUDA) into every Lightning checkpoint and
    restores them on ``--resume``, so the diffusion noise after a resume is the noise the
    uninterrupted run would have drawn (the data order is restored by the loader's own state).
    Stored as tensors and numbers only, so the checkpoint still loads with ``weights_only=True``."""

    def state_dict(self) -> dict:
        import random

        import numpy as np

        name, keys, position, has_gauss, gauss = np.random.get_state()
        version, words, next_gauss = random.getstate()
        state = {"torch": torch.get_rng_state(),
                 "numpy": {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "position": int(position),
                           "has_gauss": int(has_gauss), "gauss": float(gauss)},
                 "python": {"version": version, "words": list(words), "gauss": next_gauss}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        import random

        import numpy as np

        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["position"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["words"]), p["gauss"]))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def _csv_logger_class():
    """Lightning's ``CSVLogger`` whose log is never truncated in place.

    When a row brings a new column (the first validation row after training rows), Lightning
    rewrites ``metrics.csv`` with the wider header by opening it for writing and writing every row
    back; a run killed between the two loses its whole log. Here the wider file is written beside
    it and moved over it in one ``os.replace``, so a kill leaves the old log or the new one."""
    import os

    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class _Writer(ExperimentWriter):
        def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
            with open(self.metrics_file_path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            partial = self.metrics_file_path + ".partial"
            with open(partial, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self.metrics_file_path)

    class _Logger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                Path(self.log_dir).mkdir(parents=True, exist_ok=True)
                self._experiment = _Writer(log_dir=self.log_dir)
            return self._experiment

    return _Logger, _Writer


def _loggers(out_dir: Path, flush_every: int):
    csv_logger, _ = _csv_logger_class()
    # flushed as often as rows are logged: a killed run keeps its log up to the kill
    loggers = [csv_logger(str(out_dir), name="logs", version="", flush_logs_every_n_steps=max(1, flush_every))]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=""))
    except ImportError:
        pass
    return loggers


def _keep_earlier_log(out_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``; a resumed run keeps it as the next
    ``metrics-partK.csv`` (``read_metrics`` joins the parts in order)."""
    log = out_dir / "logs" / "metrics.csv"
    if log.is_file():
        k = 1
        while (out_dir / "logs" / f"metrics-part{k}.csv").exists():
            k += 1
        log.rename(out_dir / "logs" / f"metrics-part{k}.csv")


def _checkpoint_class():
    """Lightning's ``ModelCheckpoint`` whose save at the end of training keeps the raw weights.

    Lightning saves "last" once more when training ends, in ``on_train_end``, which runs after the EMA
    callback's ``on_train_end`` has copied the averaged weights into the model: that file (once a
    second ``last-v1.ckpt``) would hold no raw weights for a resumed run to continue. Here the EMA
    callback asks for that save first (:meth:`save_last_now`), and it is skipped when the last step
    was saved already."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class _Checkpoint(ModelCheckpoint):
        def save_last_now(self, trainer) -> None:
            if self.save_last and trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

        def on_train_end(self, trainer, pl_module):
            self.save_last_now(trainer)

    return _Checkpoint


def make_trainer(config: TrainConfig, out_dir: str | Path, *, monitor: str = "val/loss", progress: bool = True,
                 has_validation: bool = True, resume: bool = False) -> L.Trainer:
    """A ``Trainer`` writing logs and checkpoints under ``out_dir`` (``resume``: keep the earlier log)."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    out_dir = Path(out_dir)
    if resume and rank_zero_only.rank == 0:
        _keep_earlier_log(out_dir)
    # no version counter: the epoch saves and the step saves write the same last.ckpt (not a second
    # last-v1.ckpt), and a new best replaces best.ckpt
    callbacks = [
        _checkpoint_class()(
            dirpath=str(out_dir / "checkpoints"),
            filename="best",
            monitor=monitor if has_validation else None,
            mode="min",
            save_last=True,
            save_top_k=1,
            enable_version_counter=False,
        ),
        LearningRateMonitor(logging_interval="step"),
        RandomState(),
    ]
    if config.checkpoint_every_steps > 0:  # mid-epoch resume points (the loader's position is saved too)
        callbacks.append(_checkpoint_class()(dirpath=str(out_dir / "checkpoints"), save_last=True, save_top_k=0,
                                         every_n_train_steps=config.checkpoint_every_steps,
                                         enable_version_counter=False))
    ema = ema_callback(config.ema_decay)
    if ema is not None:
        callbacks.append(ema)
    if progress:
        try:
            from lightning.pytorch.callbacks import RichProgressBar

            callbacks.append(RichProgressBar(leave=True))
        except (ImportError, ModuleNotFoundError):
            pass
    max_time = {"minutes": config.max_time_minutes} if config.max_time_minutes > 0 else None
    val_kwargs = {}
    if config.val_every_steps > 0:
        val_kwargs = dict(val_check_interval=config.val_every_steps, check_val_every_n_epoch=None)
    devices = config.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return L.Trainer(
        default_root_dir=str(out_dir),
        max_epochs=config.max_epochs if config.max_epochs > 0 else -1,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        max_time=max_time,
        gradient_clip_val=config.grad_clip if config.grad_clip > 0 else None,
        accelerator=config.accelerator,
        devices=devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=resolve_precision(config),
        logger=_loggers(out_dir, config.log_every_steps),
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, config.log_every_steps),
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_validation else 0,
        **val_kwargs,
    )


def last_checkpoint(out_dir: str | Path) -> str | None:
    """``OUT/checkpoints/last.ckpt`` if an earlier run left one (for ``--resume``), checked and made
    to refer to this folder only (:func:`crysdiff.runfolder.resume_checkpoint`); pass it to
    ``trainer.fit`` with ``weights_only=True``."""
    from crysdiff.runfolder import resume_checkpoint

    return resume_checkpoint(out_dir)


def read_metrics(out_dir: str | Path) -> list[dict[str, float]]:
    """Rows of ``OUT/logs/metrics.csv`` with numeric values (empty cells dropped), preceded by those of
    the logs of earlier, interrupted segments of the run (``metrics-part1.csv``, ...)."""
    logs = Path(out_dir) / "logs"
    parts = sorted(logs.glob("metrics-part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics-part") or 0))
    rows = []
    for path in [*parts, logs / "metrics.csv"]:
        if path.is_file():
            rows.extend(_read_log(path))
    return rows


def _read_log(path: Path) -> list[dict[str, float]]:
    text = path.read_text()
    if not text.endswith("\n"):  # a kill in the middle of appending a row: its cut-off numbers are not read
        text = text[: text.rfind("\n") + 1]
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        parsed = {}
        for key, value in row.items():
            if key is not None and value not in ("", None):  # cells beyond the header are dropped
                try:
                    parsed[key] = float(value)
                except ValueError:
                    pass
        rows.append(parsed)
    return rows


def plot_curves(out_dir: str | Path, keys: list[str], filename: str = "loss_curve.png", title: str = "") -> Path | None:
    """Draw the logged curves ``keys`` against the step into ``OUT/filename``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out_dir)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimiser step")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out_dir) / filename
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class Stopwatch:
    """Wall-clock timer for reporting (``with Stopwatch() as sw: ...; sw.seconds``)."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False
