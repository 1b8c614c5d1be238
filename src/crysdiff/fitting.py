"""One training run of a task, shared by pre-training and fine-tuning: the trainer, the loaders,
the fit and the best weights restored."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crysdiff.config import TrainConfig

__all__ = ["fit_task"]


def fit_task(task, config: TrainConfig, out_dir: str | Path, train: tuple, val: tuple, edges, *, monitor: str,
             progress: bool, resume: bool, resume_from: str | None, targets: list[str] | None = None):
    """Fit ``task`` on ``train`` = ``(cache, indices)``, validating on ``val`` (no validation when it has
    no indices), and load the best weights (by ``monitor``) back into it. Returns the trainer, the
    validation loader (``None`` without validation) and the fit's wall-clock seconds."""
    from crysdiff.engine import make_trainer, planned_steps
    from crysdiff.loader import make_loader
    from crysdiff.runfolder import best_state_dict

    (train_cache, train_idx), (val_cache, val_idx) = train, val
    has_validation = len(np.asarray(val_idx)) > 0
    trainer = make_trainer(config, out_dir, monitor=monitor, progress=progress, has_validation=has_validation,
                           resume=resume)
    loader_args = dict(batch_size=config.batch_size, edges=edges, num_workers=config.num_workers,
                       max_atoms_per_batch=config.max_atoms_per_batch or None, targets=targets,
                       rank=trainer.global_rank, world_size=trainer.world_size)
    train_loader = make_loader(train_cache, train_idx, shuffle=True, seed=config.seed, **loader_args)
    val_loader = make_loader(val_cache, val_idx, shuffle=False, **loader_args) if has_validation else None
    task.total_steps = planned_steps(config, len(train_loader))
    started = time.perf_counter()
    trainer.fit(task, train_loader, val_loader, ckpt_path=resume_from, weights_only=True)
    seconds = time.perf_counter() - started
    best = best_state_dict(trainer, out_dir)
    if best is not None:
        task.load_state_dict(best)
    return trainer, val_loader, seconds
