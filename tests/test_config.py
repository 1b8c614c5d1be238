"""Config schema: YAML round trip, dotted overrides, errors that name the key; checkpoints."""

from dataclasses import dataclass, field

import pytest
import torch

from crysdiff.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from crysdiff.config import ConfigError, TrainConfig, apply_overrides, from_dict, load_yaml, save_yaml, to_dict
from crysdiff.heads import HeadConfig


@dataclass(frozen=True)
class RunConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    name: str = "run"
    widths: tuple[int, ...] = (64, 64)


def test_yaml_round_trip(tmp_path):
    config = apply_overrides(RunConfig(), ["train.lr=3e-4", "head.kind=eq4", "widths=128,32"])
    path = tmp_path / "config.yaml"
    save_yaml(config, path)
    again = load_yaml(RunConfig, path)
    assert again == config
    assert again.train.lr == pytest.approx(3e-4) and again.head.kind == "eq4" and again.widths == (128, 32)


def test_partial_yaml_takes_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 8\n")
    config = load_yaml(RunConfig, path)
    assert config.train.batch_size == 8 and config.train.lr == TrainConfig().lr


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.lrr=1"], "train.lrr"),
        (["nosuch.key=1"], "nosuch.key"),
        (["train.batch_size=big"], "train.batch_size"),
        (["train.batch_size"], "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        apply_overrides(RunConfig(), override)


def test_unknown_yaml_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key train.bogus"):
        from_dict(RunConfig, {"train": {"bogus": 1}})


def test_types_are_coerced_and_checked():
    config = from_dict(RunConfig, {"train": {"batch_size": "16", "lr": "1e-3"}})
    assert config.train.batch_size == 16 and isinstance(config.train.lr, float)
    assert to_dict(config)["widths"] == [64, 64]


def test_checkpoint_round_trip_and_errors(tmp_path):
    layer = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "m.ckpt", kind="finetune", config=to_dict(RunConfig()), state_dict=layer.state_dict(),
                           normalizer={"mean": 1.5, "std": 2.0})
    payload = load_checkpoint(path, kind="finetune")
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(payload["state_dict"], strict=True)
    assert torch.equal(fresh.weight, layer.weight)
    assert from_dict(RunConfig, payload["config"]) == RunConfig()
    with pytest.raises(CheckpointError, match="expected a pretrain checkpoint"):
        load_checkpoint(path, kind="pretrain")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.ckpt", kind="pretrain", config={}, state_dict={"w": torch.ones(2)})

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError):
        save_checkpoint(path, kind="pretrain", config={}, state_dict={"w": torch.zeros(2)})
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]
