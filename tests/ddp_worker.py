"""One rank of the 2-process DDP check in ``test_distributed.py`` (run under ``torch.distributed.run``).

Trains a tiny denoiser with Lightning's DDP strategy on CPU (gloo) for a few steps, through the same
engine and loader as ``crysdiff pretrain``, and saves what this rank ended with: its weights, the
initial weights and the crystals it was given.
"""

import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

from crysdiff.cache import load_dataset
from crysdiff.config import TrainConfig
from crysdiff.denoiser import DenoiserConfig
from crysdiff.engine import make_trainer
from crysdiff.loader import make_loader
from crysdiff.pretrain import PretrainConfig, PretrainTask


def main(out: Path, data: str) -> None:
    train = TrainConfig(batch_size=2, max_steps=4, accelerator="cpu", devices="2", strategy="ddp", lr=1e-2,
                        warmup_steps=0, ema_decay=0.0, seed=int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    config = PretrainConfig(model=DenoiserConfig(hidden_dim=16, num_layers=1, num_frequencies=4, time_dim=8), train=train)
    trainer = make_trainer(train, out, progress=False, has_validation=False)
    rank = trainer.global_rank
    L.seed_everything(rank + 1, verbose=False)  # different initial weights per rank: DDP must make them agree
    task = PretrainTask(config)
    initial = {k: v.clone() for k, v in task.model.state_dict().items()}
    cache = load_dataset([data], progress=False, workers=1)
    loader = make_loader(cache, np.arange(len(cache)), batch_size=2, shuffle=True, seed=0, rank=rank,
                         world_size=trainer.world_size)
    seen = [int(i) for indices in loader.batch_sampler for i in indices]  # this rank's share of epoch 0
    trainer.fit(task, loader)
    torch.save({"rank": rank, "world_size": trainer.world_size, "state_dict": task.model.state_dict(),
                "initial": initial, "seen": seen, "steps": trainer.global_step}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
