"""The training engine: Lightning's ``Trainer`` set up the same way for every crysdiff run.

The engine only sees "batch in, loss out": a task (a ``LightningModule`` such as
:class:`crysdiff.pretrain.PretrainTask` or :class:`crysdiff.finetune.FinetuneTask`) computes its
loss; this module owns the optimiser and schedule, logging (CSV always, TensorBoard when installed;
the logs, reading them back and the loss curves are :mod:`crysdiff.runlog`), the progress bar,
checkpoints for resuming (``OUT/checkpoints/last.ckpt``), time limits and the multi-GPU /
multi-node setup.

Data order is crysdiff's own: the batch samplers shard by ``trainer.global_rank`` /
``trainer.world_size`` themselves, so Lightning is told not to replace them.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from crysdiff.config import TrainConfig
from crysdiff.notices import warn_once
from crysdiff.runlog import keep_earlier_log, plot_curves, read_metrics, run_loggers

__all__ = ["make_trainer", "configure_adamw", "plot_curves", "last_checkpoint", "resolve_precision", "ema_callback",
           "RandomState", "planned_steps", "read_metrics"]


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
        keep_earlier_log(out_dir)
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
        logger=run_loggers(out_dir, config.log_every_steps),
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
