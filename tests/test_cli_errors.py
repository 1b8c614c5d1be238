"""Simple mistakes on the command line: one line saying what was expected, exit code 2, nothing
written, and found before any prediction work. Fine-tuning without validation crystals says what is
missing, and predicting with such a model says the interval is uncalibrated."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import write_perov_rows

from crysdiff.cli import main

STRUCTURES = "examples/structures"
MODEL = "formation_energy_per_atom"


@pytest.fixture
def no_prediction(monkeypatch):
    """Fails the test if a model is loaded (the checks must come first)."""
    import crysdiff.predict

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(crysdiff.predict, "load", refuse)


def _fails_cleanly(capsys, argv, *needles):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("crysdiff: error:") and "Traceback" not in err, err
    assert all(needle in lines[0] for needle in needles), lines[0]
    return lines[0]


@pytest.mark.parametrize("samples", ["0", "-1", "1"])
def test_too_few_samples_are_refused(samples, capsys, no_prediction, tmp_path):
    out = tmp_path / "p.csv"
    _fails_cleanly(capsys, ["predict", "--model", MODEL, STRUCTURES, "--samples", samples, "--out", str(out)],
                   f"--samples {samples}", "at least 2")
    assert not out.exists()


@pytest.mark.parametrize("device,needle", [("bogus", "not a device name"), ("cuda:7x", "not a device name"),
                                           ("meta", "unsupported device type")])
def test_unknown_devices_are_refused(device, needle, capsys, no_prediction):
    _fails_cleanly(capsys, ["predict", "--model", MODEL, STRUCTURES, "--device", device], f"--device {device}", needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(capsys, no_prediction):
    _fails_cleanly(capsys, ["predict", "--model", MODEL, STRUCTURES, "--device", "cuda"], "CUDA is not available")


def test_out_must_be_writable_with_a_known_extension(capsys, no_prediction, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        (tmp_path / "x.xlsx", ["unknown extension '.xlsx'", "accepted: .csv, .json"]),
        (tmp_path / "noext", ["unknown extension '(none)'"]),
        (blocker / "sub" / "p.csv", [f"{blocker} is a file, not a folder"]),
        (tmp_path, ["unknown extension"]),
    ]
    for out, needles in cases:
        _fails_cleanly(capsys, ["predict", "--model", MODEL, STRUCTURES, "--out", str(out)], *needles)
    folder = tmp_path / "p.csv"
    folder.mkdir()
    _fails_cleanly(capsys, ["predict", "--model", MODEL, STRUCTURES, "--out", str(folder)], "is a folder")
    # a place no process can create files in, even as root
    _fails_cleanly(capsys, ["predict", "--model", MODEL, STRUCTURES, "--out", "/proc/crysdiff-test/p.csv"],
                   "cannot be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "p.csv"] and blocker.read_text() == "x"


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a model\n", b"\x00\x01\x02garbage"])
def test_a_model_file_that_is_not_a_checkpoint_is_one_line(content, capsys, tmp_path):
    model = tmp_path / "model.ckpt"
    model.write_bytes(content)
    out = tmp_path / "p.csv"
    _fails_cleanly(capsys, ["predict", "--model", str(model), STRUCTURES, "--out", str(out)], str(model),
                   "not a plain torch checkpoint")
    assert not out.exists()


def test_finetuning_without_validation_crystals_warns_and_predict_says_uncalibrated(shared_data, tmp_path, capsys):
    write_perov_rows(shared_data, tmp_path, nine=(0, 9))
    out = tmp_path / "ft"
    code = main(["finetune", "--data", str(tmp_path / "nine.csv"), "--target", "heat_ref", "--out", str(out),
                 "--no-progress", "--workers", "1", "model.hidden_dim=16", "model.num_layers=1",
                 "model.num_frequencies=4", "model.time_dim=8", "property.timesteps=10", "train.max_steps=2",
                 "train.batch_size=4", "eval_samples=2"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    warning = [line for line in err.splitlines() if line.startswith("crysdiff: warning: no validation crystals")]
    assert len(warning) == 1 and "no validation MAE" in warning[0] and "not calibrated" in warning[0]
    assert (out / "model.ckpt").is_file()
    assert main(["predict", "--model", str(out / "model.ckpt"), STRUCTURES, "--samples", "4", "--device", "cpu",
                 "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "95% interval is uncalibrated" in err
    frame = pd.read_csv(tmp_path / "p.csv")
    assert list(frame.columns) == ["id", "source", "mean", "std", "p2.5", "p97.5", "unit", "n_atoms", "n_atoms_model",
                                   "cell", "flags"] and len(frame) == 10
    # a calibrated model says nothing of the kind
    assert main(["predict", "--model", MODEL, STRUCTURES, "--samples", "4", "--device", "cpu",
                 "--out", str(tmp_path / "q.csv")]) == 0
    assert "uncalibrated" not in capsys.readouterr().err


def test_step_and_epoch_saves_share_one_last_checkpoint(shared_data, tmp_path):
    write_perov_rows(shared_data, tmp_path, data=(0, 12))
    out = tmp_path / "pre"
    assert main(["pretrain", "--data", str(tmp_path / "data.csv"), "--out", str(out), "--no-progress", "--workers", "1",
                 "model.hidden_dim=16", "model.num_layers=1", "model.num_frequencies=4", "model.time_dim=8",
                 "diffusion.timesteps=10", "train.batch_size=4", "train.max_steps=4", "train.checkpoint_every_steps=2",
                 "data.val_fraction=0.25"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_a_missing_model_and_other_verbs_devices_are_one_line(capsys, no_prediction, tmp_path):
    _fails_cleanly(capsys, ["predict", "--model", str(tmp_path / "nope.ckpt"), STRUCTURES],
                   "neither a checkpoint file nor a bundled model name")
    for verb in (["sample", "--model", "x.ckpt", "--composition", "NaCl", "--out", str(tmp_path / "s")],
                 ["calibrate", "--model", MODEL, "--data", STRUCTURES, "--out", str(tmp_path / "c.ckpt")]):
        _fails_cleanly(capsys, [*verb, "--device", "bogus"], "--device bogus", "not a device name")
    assert not (tmp_path / "s").exists() and not (tmp_path / "c.ckpt").exists()
