"""The training engine: EMA of the weights and precision selection."""

import lightning as L
import pytest
import torch

from crysdiff.config import TrainConfig
from crysdiff.engine import configure_adamw, ema_callback, make_trainer, resolve_precision


class Line(L.LightningModule):
    """Least squares on a fixed random problem; records its raw weights after every step."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        self.layer = torch.nn.Linear(4, 1)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=generator)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.raw = []
        self.validated = []

    def training_step(self, batch, batch_idx):
        return ((self.layer(self.x) - self.y) ** 2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.raw.append(self.layer.weight.detach().clone())

    def validation_step(self, batch, batch_idx):
        self.validated.append(self.layer.weight.detach().clone())
        self.log("val/loss", ((self.layer(self.x) - self.y) ** 2).mean())

    def configure_optimizers(self):
        return configure_adamw(self, self.parameters(), self.config, int(self.trainer.estimated_stepping_batches))


def _fit(tmp_path, decay, steps=12):
    config = TrainConfig(max_steps=steps, lr=0.1, warmup_steps=0, accelerator="cpu", ema_decay=decay, val_every_steps=steps)
    module = Line(config)
    trainer = make_trainer(config, tmp_path, progress=False)
    data = torch.utils.data.DataLoader(range(steps), batch_size=1)
    trainer.fit(module, data, torch.utils.data.DataLoader(range(1), batch_size=1))
    return module, torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)


def test_ema_weights_are_validated_saved_and_exported(tmp_path):
    decay = 0.8
    module, checkpoint = _fit(tmp_path, decay)
    expected = module.raw[0]
    for n, raw in enumerate(module.raw[1:], start=1):  # warmed-up decay, n = updates so far
        beta = min(decay, (1 + n) / (10 + n))
        expected = beta * expected + (1 - beta) * raw
    assert not torch.allclose(expected, module.raw[-1], atol=1e-3)  # averaging made a difference
    torch.testing.assert_close(module.validated[-1], expected)  # validation sees the average
    torch.testing.assert_close(checkpoint["state_dict"]["layer.weight"], expected)  # so does the checkpoint
    torch.testing.assert_close(checkpoint["current_model_state"]["layer.weight"], module.raw[-1])  # raw kept to resume
    torch.testing.assert_close(module.layer.weight.detach(), expected)  # and the model after training


def test_ema_off_keeps_raw_weights(tmp_path):
    module, checkpoint = _fit(tmp_path, 0.0)
    torch.testing.assert_close(module.layer.weight.detach(), module.raw[-1])
    assert "current_model_state" not in checkpoint


def test_bad_ema_decay_is_rejected():
    with pytest.raises(ValueError, match="ema_decay"):
        ema_callback(1.5)


def test_precision_auto_is_bf16_on_a_bf16_gpu_and_full_precision_otherwise(monkeypatch, tmp_path):
    """``precision=auto``: bf16-mixed where a CUDA GPU that supports it will be used, 32-true on a GPU
    without bf16, on the CPU, or when the CPU is asked for; an explicit setting is kept. The setting
    the trainer gets is the resolved one."""
    for available, bf16, accelerator, expected in ((True, True, "auto", "bf16-mixed"), (True, True, "gpu", "bf16-mixed"),
                                                   (True, False, "auto", "32-true"), (True, True, "cpu", "32-true"),
                                                   (False, True, "auto", "32-true")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        assert resolve_precision(TrainConfig(accelerator=accelerator)) == expected, (available, bf16, accelerator)
    monkeypatch.undo()
    assert resolve_precision(TrainConfig(precision="16-mixed")) == "16-mixed"
    trainer = make_trainer(TrainConfig(accelerator="cpu", precision="bf16-mixed"), tmp_path, progress=False)
    assert trainer.precision == "bf16-mixed"
    trainer = make_trainer(TrainConfig(accelerator="cpu"), tmp_path, progress=False)
    assert trainer.precision == "32-true"


class LrLine(Line):
    """``Line`` that records the learning rate used at every step."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.lrs = []

    def on_train_batch_start(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("minutes", [1.0, 0.0])
def test_time_budget_anneals_the_learning_rate(tmp_path, monkeypatch, minutes):
    """With ``anneal_over_time`` and ``max_time_minutes`` the cosine runs over the wall-clock budget (read from Lightning's
    Timer, here faked at 6 s per step against a 60 s budget): the run stops after about 10 steps with
    the rate near its floor. Without a time cap the same 10 steps of a 1000-step run stay near the peak."""
    from lightning.pytorch.callbacks import Timer

    config = TrainConfig(max_steps=1000 if minutes else 10, max_time_minutes=minutes, lr=0.1, warmup_steps=0,
                         min_lr_ratio=0.05, accelerator="cpu", ema_decay=0, val_every_steps=1000, anneal_over_time=True)
    module = LrLine(config)
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": 6.0 * module.trainer.global_step)
    trainer = make_trainer(config, tmp_path, progress=False)
    if not minutes:  # the step schedule of a 1000-step run, stopped by hand after 10 steps
        module.configure_optimizers = lambda: configure_adamw(module, module.parameters(), config, 1000)
    trainer.fit(module, torch.utils.data.DataLoader(range(1000), batch_size=1))
    lrs = torch.tensor(module.lrs)
    assert 9 <= len(lrs) <= 12
    assert torch.all(lrs[1:] <= lrs[:-1] + 1e-12)
    if minutes:
        assert lrs[0] == pytest.approx(0.1)
        assert 0.03 < float(lrs[5]) < 0.075  # about half-way down the cosine: 0.0525 at progress 0.5
        assert float(lrs[-1]) < 0.012
    else:
        assert float(lrs[-1]) > 0.099


def test_time_annealing_is_off_by_default(tmp_path, monkeypatch):
    """The default decays over the planned steps only: a time-capped 1000-step run keeps its peak rate."""
    from lightning.pytorch.callbacks import Timer

    config = TrainConfig(max_steps=1000, max_time_minutes=1.0, lr=0.1, warmup_steps=0, accelerator="cpu", ema_decay=0,
                         val_every_steps=1000)
    module = LrLine(config)
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": 6.0 * module.trainer.global_step)
    make_trainer(config, tmp_path, progress=False).fit(module, torch.utils.data.DataLoader(range(1000), batch_size=1))
    assert 9 <= len(module.lrs) <= 12 and min(module.lrs) > 0.099


def test_a_log_rewrite_cut_short_keeps_the_earlier_rows(tmp_path, monkeypatch):
    """A new column makes the CSV log rewrite itself with a wider header; a run killed during that
    rewrite must still hold every earlier row (Lightning's own writer truncates the file first)."""
    import csv

    from crysdiff.runlog import csv_logger_class, read_metrics

    _, writer_class = csv_logger_class()

    def write(out, killed_in_rewrite):
        writer = writer_class(str(out / "logs"))
        for step in range(3):
            writer.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
        writer.save()
        before = (out / "logs" / "metrics.csv").read_bytes()
        writer.log_metrics({"val/mae": 0.5}, step=3)
        if not killed_in_rewrite:
            writer.save()
            return before

        def killed(self, rows):
            raise KeyboardInterrupt("killed during the rewrite")

        with monkeypatch.context() as patch:
            patch.setattr(csv.DictWriter, "writerows", killed)
            with pytest.raises(KeyboardInterrupt):
                writer.save()
        return before

    before = write(tmp_path / "killed", killed_in_rewrite=True)
    assert (tmp_path / "killed" / "logs" / "metrics.csv").read_bytes() == before
    assert [row["step"] for row in read_metrics(tmp_path / "killed")] == [0, 1, 2]

    write(tmp_path / "whole", killed_in_rewrite=False)  # uninterrupted: the wider header, every row kept
    rows = read_metrics(tmp_path / "whole")
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert rows[3]["val/mae"] == 0.5 and rows[0]["train/loss"] == 1.0
    assert not list((tmp_path / "whole" / "logs").glob("*.partial"))


def test_a_row_cut_off_mid_append_is_not_read(tmp_path):
    """A kill while a row is appended leaves part of it with no line end; reading it would report a cut
    number (1.2 for 1.2345) as if it had been logged. The rows before it, and the earlier segments' logs,
    are read as they are."""
    from crysdiff.engine import read_metrics

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics-part1.csv").write_text("epoch,step,train/loss\n0,0,2.0\n0,1,1.9")  # cut in an earlier segment
    (logs / "metrics.csv").write_text("epoch,step,train/loss,val/mae\n0,19,1.5,\n0,20,1.4,0.71\n0,21,1.2")
    assert read_metrics(tmp_path) == [{"epoch": 0, "step": 0, "train/loss": 2.0},
                                      {"epoch": 0, "step": 19, "train/loss": 1.5},
                                      {"epoch": 0, "step": 20, "train/loss": 1.4, "val/mae": 0.71}]
    (logs / "metrics.csv").write_text("epoch,st")  # cut inside the header: nothing to read, no error
    assert read_metrics(tmp_path)[1:] == []


def test_steps_logged_after_the_last_checkpoint_of_a_killed_segment_are_dropped(tmp_path):
    """A run checkpointed at step 4, killed at step 7 and resumed logs steps 4-7 twice: once in the
    dead segment, once in the resumed one. The run's log keeps the resumed rows only, so each step
    appears once and a curve drawn from it does not double back."""
    from crysdiff.engine import read_metrics

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics-part1.csv").write_text("step,train/loss\n" + "".join(f"{s},{10 - s}\n" for s in range(4)))
    (logs / "metrics-part2.csv").write_text("step,train/loss\n" + "".join(f"{s},{5 + s}\n" for s in range(4, 8)))
    (logs / "metrics.csv").write_text("step,train/loss\n" + "".join(f"{s},{1 / s}\n" for s in range(4, 10)))
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == list(range(10))
    assert [row["train/loss"] for row in rows[4:]] == [1 / s for s in range(4, 10)]  # the resumed segment's


def test_the_training_log_holds_training_and_validation_rows(tmp_path):
    from crysdiff.engine import read_metrics

    class Logged(Line):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train/loss", loss)
            return loss

    config = TrainConfig(max_steps=6, lr=0.1, warmup_steps=0, accelerator="cpu", ema_decay=0.0, val_every_steps=3,
                         log_every_steps=1)
    trainer = make_trainer(config, tmp_path, progress=False)
    trainer.fit(Logged(config), torch.utils.data.DataLoader(range(6), batch_size=1),
                torch.utils.data.DataLoader(range(1), batch_size=1))
    rows = read_metrics(tmp_path)
    assert sorted(int(row["step"]) for row in rows if "train/loss" in row) == list(range(6))
    assert len([row for row in rows if "val/loss" in row]) == 2
    assert not list((tmp_path / "logs").glob("*.partial"))


def test_fused_optimizer_takes_the_same_steps_as_the_plain_one(tmp_path):
    """``train.fused_optimizer`` (off by default) builds AdamW's fused kernel and, through Lightning's
    gradient clipping and schedule, makes the same weights as the plain AdamW up to float rounding."""
    assert TrainConfig().fused_optimizer is False
    runs = {}
    for fused in (False, True):
        config = TrainConfig(max_steps=8, lr=0.1, warmup_steps=2, accelerator="cpu", ema_decay=0, val_every_steps=8,
                             grad_clip=0.5, weight_decay=0.01, fused_optimizer=fused)
        torch.manual_seed(0)  # the same initial weights
        module = Line(config)
        make_trainer(config, tmp_path / str(fused), progress=False).fit(
            module, torch.utils.data.DataLoader(range(8), batch_size=1), torch.utils.data.DataLoader(range(1), batch_size=1))
        runs[fused] = (module.trainer.optimizers[0].defaults.get("fused"), torch.stack(module.raw))
    assert not runs[False][0] and runs[True][0] is True
    assert not torch.allclose(runs[True][1][0], runs[True][1][-1])  # the weights moved
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=1e-5, atol=1e-6)
