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


def test_precision_auto_is_full_precision_on_cpu():
    assert resolve_precision(TrainConfig(accelerator="cpu")) == "32-true"
    assert resolve_precision(TrainConfig(precision="bf16-mixed")) == "bf16-mixed"
    if not torch.cuda.is_available():
        assert resolve_precision(TrainConfig()) == "32-true"
