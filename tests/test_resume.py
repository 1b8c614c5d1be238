"""``pretrain --resume`` and ``finetune --resume`` continue the interrupted run exactly.

Each run is interrupted in the middle of its first epoch (an exception raised at the start of step
``STOP``, right after the step checkpoint of the step before it was written) and resumed through the
CLI. A seeded fresh start reproduces the interrupted run's first steps bit for bit, so comparing
weights alone cannot tell a resume from a restart: these tests also check where the resumed run
starts (its first step and its log), and what it starts from (optimiser, schedule and EMA state).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

import crysdiff.engine
from crysdiff.cli import main
from crysdiff.engine import read_metrics

TINY = ["model.hidden_dim=16", "model.num_layers=1", "model.num_frequencies=4", "model.time_dim=8"]
STEPS, STOP = 6, 3  # 16 crystals in batches of 4: 4 steps an epoch, so the stop is mid-epoch


class Interrupted(Exception):
    pass


class _Stop(L.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == STOP:
            raise Interrupted


class _Probe(L.Callback):
    """What the (resumed) run starts from, and how many batches this process trains."""

    def __init__(self):
        self.batches = 0

    def on_train_start(self, trainer, module):
        from lightning.pytorch.callbacks import WeightAveraging

        ema = next(c for c in trainer.callbacks if isinstance(c, WeightAveraging))
        self.start_step = trainer.global_step
        self.optimizer = _clone(trainer.optimizers[0].state_dict())
        self.scheduler_step = trainer.lr_scheduler_configs[0].scheduler.last_epoch
        self.weights = _clone(module.state_dict())
        self.ema_weights = _clone(ema._average_model.module.state_dict())
        self.ema_count = int(ema._average_model.n_averaged)

    def on_train_batch_end(self, *args):
        self.batches += 1


def _clone(tree):
    if torch.is_tensor(tree):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(v) for v in tree)
    return tree


def _equal(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _command(kind: str, data, out, steps: int) -> list[str]:
    common = ["--data", str(data / "train.csv"), "--val", str(data / "val.csv"), "--out", str(out), "--no-progress",
              "--workers", "1", *TINY, "train.batch_size=4", "train.warmup_steps=2", "train.log_every_steps=1",
              "train.checkpoint_every_steps=1", "train.ema_decay=0.9", "train.lr=3e-3", f"train.max_steps={steps}"]
    if kind == "pretrain":
        return ["pretrain", *common, "diffusion.timesteps=20"]
    return ["finetune", "--target", "heat_ref", *common, "property.timesteps=20", "eval_samples=2", "report_samples=4"]


def _run(kind, data, out, steps, *extra, callback=None):
    original = crysdiff.engine.make_trainer

    def make_trainer(*args, **kwargs):
        trainer = original(*args, **kwargs)
        if callback is not None:
            trainer.callbacks.append(callback)
        return trainer

    with pytest.MonkeyPatch.context() as patch:  # both runs look it up at fit time (crysdiff.fitting.fit_task)
        patch.setattr(crysdiff.engine, "make_trainer", make_trainer)
        return main([*_command(kind, data, out, steps), *extra])


def _last(out) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module", params=["pretrain", "finetune"])
def runs(request, perov_16_6, tmp_path_factory):
    """An uninterrupted run, the same run interrupted at step STOP and resumed, and a fresh run of
    the STEPS - STOP steps that remained (all with the same seed)."""
    kind, root = request.param, tmp_path_factory.mktemp(request.param)
    assert _run(kind, perov_16_6, root / "whole", STEPS) == 0
    with pytest.raises(Interrupted):
        _run(kind, perov_16_6, root / "resumed", STEPS, callback=_Stop())
    assert not (root / "resumed" / "model.ckpt").exists()
    saved = _last(root / "resumed")
    probe = _Probe()
    assert _run(kind, perov_16_6, root / "resumed", STEPS, "--resume", callback=probe) == 0
    assert _run(kind, perov_16_6, root / "fresh", STEPS - STOP) == 0
    return {"kind": kind, "root": root, "saved": saved, "probe": probe}


def test_the_resumed_run_starts_at_the_checkpoints_step(runs):
    probe, saved = runs["probe"], runs["saved"]
    assert saved["global_step"] == STOP
    assert probe.start_step == STOP and probe.batches == STEPS - STOP
    steps = [int(row["step"]) for row in read_metrics(runs["root"] / "resumed") if "train/loss" in row]
    assert steps == list(range(STEPS))  # the interrupted segment's rows, then the resumed ones: none repeated


def test_the_resumed_run_starts_from_the_saved_optimiser_schedule_and_ema(runs):
    probe, saved = runs["probe"], runs["saved"]
    assert probe.optimizer["state"], "the optimiser starts without its moments"
    assert _equal(probe.optimizer, saved["optimizer_states"][0])
    assert probe.scheduler_step == saved["lr_schedulers"][0]["last_epoch"] == STOP
    assert _equal(probe.weights, saved["current_model_state"])
    # the averaged weights are the checkpoint's "state_dict" (Lightning's WeightAveraging) and they
    # are not the current ones: the EMA has its own history
    assert probe.ema_count == int(saved["averaging_state"]["n_averaged"]) == STOP
    assert _equal(probe.ema_weights, saved["state_dict"])
    assert not _equal(probe.ema_weights, probe.weights)


def test_the_resumed_run_ends_where_the_uninterrupted_run_ends(runs):
    root = runs["root"]
    whole, resumed = _last(root / "whole"), _last(root / "resumed")
    assert whole["global_step"] == resumed["global_step"] == STEPS
    for key in ("current_model_state", "state_dict", "optimizer_states", "averaging_state"):
        assert _equal(resumed[key], whole[key]), key
    exported = [torch.load(root / name / "model.ckpt", weights_only=True)["state_dict"] for name in ("whole", "resumed")]
    assert _equal(*exported)
    losses = [[row["train/loss"] for row in read_metrics(root / name) if "train/loss" in row] for name in ("whole", "resumed")]
    assert losses[0] == losses[1]


def test_the_resumed_run_is_not_a_fresh_run_of_the_remaining_steps(runs):
    root = runs["root"]
    fresh, resumed = _last(root / "fresh"), _last(root / "resumed")
    assert fresh["global_step"] == STEPS - STOP
    assert not _equal(fresh["current_model_state"], resumed["current_model_state"])
    assert not _equal(fresh["state_dict"], resumed["state_dict"])



class _StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Interrupted


class _BestProbe(L.Callback):
    """The best score and path the resumed run's best-checkpoint callback starts with."""

    def on_train_start(self, trainer, module):
        from lightning.pytorch.callbacks import ModelCheckpoint

        best = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor)
        self.score, self.path = best.best_model_score, best.best_model_path


def test_a_resume_through_a_relative_out_keeps_the_best_checkpoint(perov_16_6, tmp_path, monkeypatch):
    """Lightning restores the best score only when the stored folder is the same string as its own
    (real, absolute) one. A resume through a relative ``--out`` used to rewrite it to the relative
    path, so the resumed run forgot its best score and took its next validation as the best,
    whatever it scored."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):  # stopped in the second epoch, after the first validation
        _run("finetune", perov_16_6, "run", STEPS, callback=_StopAt(5))
    saved = _last(out)
    stored = next(s for s in saved["callbacks"].values() if isinstance(s, dict) and s.get("monitor"))
    assert stored["best_model_score"] is not None
    probe = _BestProbe()
    assert _run("finetune", perov_16_6, "run", STEPS, "--resume", callback=probe) == 0
    assert probe.score is not None and float(probe.score) == float(stored["best_model_score"])
    assert probe.path == str((out / "checkpoints" / "best.ckpt").resolve())
