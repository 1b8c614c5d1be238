"""Loading a run folder or a model never executes code from it.

A checkpoint whose pickle would create a marker file when unpickled is planted as ``best.ckpt``, as
``last.ckpt``, and outside the folder with ``last.ckpt`` pointing at it; ``--resume`` of
``crysdiff pretrain`` and ``crysdiff finetune`` must then fail with one line naming the file and
exit code 2, and the marker must never appear. A copied run folder resumes from its own files."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from conftest import write_perov_rows

from crysdiff.cli import main

TINY = ["model.hidden_dim=16", "model.num_layers=1", "model.num_frequencies=4", "model.time_dim=8"]


class Payload:
    """Unpickling this object opens (creates) ``marker`` for writing: code run by ``torch.load``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path, marker) -> None:
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": Payload(marker)}, path)


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sec-data")
    write_perov_rows(shared_data, root, train=(0, 16), val=(16, 20))
    return root


def _args(verb, data, out):
    common = ["--data", str(data / "train.csv"), "--val", str(data / "val.csv"), "--out", str(out), "--no-progress",
              "--workers", "1", *TINY, "train.batch_size=8", "train.warmup_steps=1", "train.max_steps=2"]
    if verb == "pretrain":
        return ["pretrain", *common, "diffusion.timesteps=10"]
    return ["finetune", "--target", "heat_ref", *common, "property.timesteps=10", "eval_samples=2", "report_samples=2"]


@pytest.fixture(scope="module", params=["pretrain", "finetune"])
def run(request, data, tmp_path_factory):
    """A finished two-step run (one epoch: its best.ckpt and last.ckpt exist)."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    assert main(_args(request.param, data, out)) == 0
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    return request.param, out


def _resume(verb, data, out, capsys, steps=2):
    capsys.readouterr()
    code = main([*_args(verb, data, out), "--resume", f"train.max_steps={steps}"])
    return code, capsys.readouterr().err


def _one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("crysdiff: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert all(needle in lines[0] for needle in needles), lines[0]


@pytest.mark.parametrize("planted", ["best.ckpt", "last.ckpt"])
def test_a_pickled_payload_in_a_run_folder_is_refused_not_run(run, data, planted, tmp_path, capsys):
    verb, original = run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    marker = tmp_path / "marker"
    plant(out / "checkpoints" / planted, marker)
    code, err = _resume(verb, data, out, capsys)
    assert code == 2 and not marker.exists()
    _one_line_error(err, str(out / "checkpoints" / planted), "refused")
    assert not marker.exists()


def test_a_last_checkpoint_pointing_outside_its_folder_is_refused(run, data, tmp_path, capsys):
    verb, original = run
    out = tmp_path / "run"
    shutil.copytree(original, out)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    marker = tmp_path / "marker"
    plant(outside / "best.ckpt", marker)
    last = out / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    for callback in state["callbacks"].values():
        if "best_model_path" in callback:
            callback["best_model_path"] = str(outside / "best.ckpt")
    torch.save(state, last)
    code, err = _resume(verb, data, out, capsys)
    assert code == 2 and not marker.exists()
    _one_line_error(err, str(last), str(outside / "best.ckpt"), "outside")


def test_a_copied_run_folder_resumes_from_its_own_files(run, data, tmp_path, capsys):
    """The paths in last.ckpt name the original folder; the copy must never read the original's files."""
    verb, original = run
    source = tmp_path / "source"
    shutil.copytree(original, source)
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    marker = tmp_path / "marker"
    plant(source / "checkpoints" / "best.ckpt", marker)  # what the old code loaded (and ran)
    code, err = _resume(verb, data, copy, capsys, steps=3)
    assert code == 0, err[-2000:]
    assert not marker.exists()
    state = torch.load(copy / "checkpoints" / "last.ckpt", weights_only=True)
    paths = [c.get("best_model_path") for c in state["callbacks"].values() if "dirpath" in c]
    assert paths and all(not p or p.startswith(str(copy)) for p in paths)
    assert sorted(os.listdir(copy / "checkpoints")) == ["best.ckpt", "last.ckpt"]  # one last checkpoint


def test_predict_refuses_a_model_carrying_a_payload(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    plant(evil, marker)
    assert main(["predict", "--model", str(evil), "examples/structures", "--device", "cpu"]) == 2
    assert not marker.exists()
    _one_line_error(capsys.readouterr().err, str(evil), "refused")
