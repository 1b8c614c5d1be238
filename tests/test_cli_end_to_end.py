"""The whole user journey on a handful of real crystals, through the real CLI, with a tiny model:
pretrain -> sample -> evaluate-csp -> finetune (from the pre-trained encoder) -> predict -> refine."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from crysdiff.checkpoint import load_checkpoint
from crysdiff.cli import main

TINY_MODEL = ["model.hidden_dim=16", "model.num_layers=1", "model.num_frequencies=4", "model.time_dim=8"]


@pytest.fixture(scope="module")
def perov_small(shared_data, tmp_path_factory):
    """40 labelled Perov-5 crystals (val split) as a CDVAE-style CSV, plus 12 for validation and 30
    more for calibration."""
    table = pd.read_csv(shared_data / "perov_5" / "val.csv.gz", index_col=0)
    root = tmp_path_factory.mktemp("perov")
    table.iloc[:40].to_csv(root / "train.csv")
    table.iloc[40:52].to_csv(root / "val.csv")
    table.iloc[52:82].to_csv(root / "calib.csv")
    return root


@pytest.fixture(scope="module")
def pretrained(perov_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    code = main(["pretrain", "--data", str(perov_small / "train.csv"), "--val", str(perov_small / "val.csv"), "--out", str(out),
                 "--no-progress", "--workers", "1", *TINY_MODEL, "diffusion.timesteps=20", "train.max_steps=3",
                 "train.batch_size=8", "train.warmup_steps=1", "train.log_every_steps=1"])
    assert code == 0
    return out


def test_pretrain_writes_a_self_describing_checkpoint(pretrained):
    payload = load_checkpoint(pretrained / "model.ckpt", kind="pretrain")
    assert payload["config"]["model"]["hidden_dim"] == 16
    assert payload["config"]["diffusion"]["timesteps"] == 20
    assert payload["data"]["train"]["num_crystals"] == 40
    assert payload["training"]["steps"] == 3
    assert "val/loss" in payload["metrics"] and payload["metrics"]["val/loss"] > 0
    assert (pretrained / "config.yaml").is_file() and (pretrained / "logs" / "metrics.csv").is_file()
    metrics = pd.read_csv(pretrained / "logs" / "metrics.csv")
    assert metrics["train/loss"].dropna().size > 0 and torch.isfinite(torch.tensor(metrics["train/loss"].dropna().values)).all()


def test_resume_continues_an_interrupted_run(pretrained, perov_small, tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(pretrained, out)
    common = ["pretrain", "--data", str(perov_small / "train.csv"), "--val", str(perov_small / "val.csv"), "--out", str(out),
              "--no-progress", "--workers", "1", *TINY_MODEL, "diffusion.timesteps=20", "train.batch_size=8",
              "train.warmup_steps=1", "train.log_every_steps=1"]
    before = load_checkpoint(out / "model.ckpt")
    assert (out / "checkpoints" / "last.ckpt").is_file() and before["training"]["steps"] == 3
    # resuming with the same step budget trains nothing more: the weights are exactly the saved ones
    # (a fresh start would have trained 3 steps from a new initialisation)
    assert main([*common, "--resume", "train.max_steps=3"]) == 0
    same = load_checkpoint(out / "model.ckpt")
    assert same["training"]["steps"] == 3
    assert all(torch.equal(same["state_dict"][k], v) for k, v in before["state_dict"].items())
    # with a larger budget it goes on from step 3 to step 7
    assert main([*common, "--resume", "train.max_steps=7"]) == 0
    after = load_checkpoint(out / "model.ckpt")
    assert after["training"]["steps"] == 7
    assert not all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())


def test_init_continues_a_pretraining_with_its_network_and_records_every_stage(pretrained, perov_small, tmp_path, capsys):
    before = load_checkpoint(pretrained / "model.ckpt")
    common = ["pretrain", "--init", str(pretrained / "model.ckpt"), "--data", str(perov_small / "train.csv"),
              "--val", str(perov_small / "val.csv"), "--no-progress", "--workers", "1", "train.batch_size=8",
              "train.warmup_steps=1", "train.max_steps=2"]
    # no model.* settings given: the network and the diffusion come from the checkpoint; a learning rate
    # this small leaves the weights where --init put them (a fresh network would be far from them)
    assert main([*common, "--out", str(tmp_path / "still"), "train.lr=1e-12"]) == 0
    still = load_checkpoint(tmp_path / "still" / "model.ckpt")
    assert still["config"]["model"] == before["config"]["model"] and still["config"]["diffusion"]["timesteps"] == 20
    assert all(torch.allclose(still["state_dict"][k], v, atol=1e-6) for k, v in before["state_dict"].items())
    assert still["training"]["steps"] == 2 and still["training"]["init"]["steps"] == 3
    assert still["training"]["init"]["path"] == str(pretrained / "model.ckpt")
    # a second continuation counts the steps of both earlier stages
    assert main([*common, "--init", str(tmp_path / "still" / "model.ckpt"), "--out", str(tmp_path / "again")]) == 0
    again = load_checkpoint(tmp_path / "again" / "model.ckpt")
    assert again["training"]["init"]["steps"] == 5
    assert not all(torch.allclose(again["state_dict"][k], v, atol=1e-6) for k, v in before["state_dict"].items())
    # another network cannot take these weights: one line naming the setting, and no output written
    assert main([*common, "--out", str(tmp_path / "other"), "model.hidden_dim=32"]) != 0
    assert "model.hidden_dim=32 (checkpoint: 16)" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_overrides_anywhere_on_the_command_line(pretrained, perov_small, tmp_path):
    out = tmp_path / "anywhere"
    # overrides after --data (which takes several values) and between options
    assert main(["pretrain", "--data", str(perov_small / "val.csv"), *TINY_MODEL, "diffusion.timesteps=20", "--out", str(out),
                 "train.max_steps=1", "--no-progress", "--workers", "1", "train.batch_size=4", "train.warmup_steps=1"]) == 0
    payload = load_checkpoint(out / "model.ckpt")
    assert payload["training"]["steps"] == 1 and payload["config"]["train"]["batch_size"] == 4
    assert payload["data"]["train"]["sources"] == [str(perov_small / "val.csv")] or len(payload["data"]["train"]["sources"]) == 1


def test_unknown_arguments_are_still_errors(capsys):
    with pytest.raises(SystemExit):
        main(["data", "inspect", "examples/structures", "--bogus"])
    assert "--bogus" in capsys.readouterr().err


def test_sample_writes_cifs_and_extxyz(pretrained, tmp_path):
    out = tmp_path / "samples"
    assert main(["sample", "--model", str(pretrained / "model.ckpt"), "--composition", "SrTiO3", "NaCl",
                 "--num-samples", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.cif")) == ["NaCl_0.cif", "NaCl_1.cif", "SrTiO3_0.cif", "SrTiO3_1.cif"]
    import ase.io

    frames = ase.io.read(out / "samples.extxyz", index=":")
    assert [len(f) for f in frames] == [2, 2, 5, 5] or sorted(len(f) for f in frames) == [2, 2, 5, 5]
    summary = json.loads((out / "samples.json").read_text())
    assert summary["requested"] == 4 and summary["valid"] == sum(s["valid"] for s in summary["samples"])
    assert all(s["valid"] == (s["invalid_reason"] == "") for s in summary["samples"])

    # --valid-only writes only valid structures, each drawn at most --max-draws times
    kept = tmp_path / "valid"
    assert main(["sample", "--model", str(pretrained / "model.ckpt"), "--composition", "SrTiO3", "NaCl",
                 "--num-samples", "2", "--out", str(kept), "--device", "cpu", "--valid-only", "--max-draws", "2"]) == 0
    summary = json.loads((kept / "samples.json").read_text())
    assert all(s["valid"] and 1 <= s["draws"] <= 2 for s in summary["samples"])
    assert len(list(kept.glob("*.cif"))) == len(summary["samples"]) == summary["valid"]


def test_sample_rejects_bad_composition(pretrained, tmp_path, capsys):
    assert main(["sample", "--model", str(pretrained / "model.ckpt"), "--composition", "Xq2O", "--out", str(tmp_path)]) == 2
    assert "Xq2O" in capsys.readouterr().err


def test_evaluate_csp_reports_fractions(pretrained, perov_small, tmp_path):
    out = tmp_path / "csp"
    assert main(["evaluate-csp", "--model", str(pretrained / "model.ckpt"), "--data", str(perov_small / "val.csv"),
                 "--samples", "2", "--limit", "3", "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 3 and 0.0 <= summary["match_rate"] <= summary["match_rate_best_of_2"] <= 1.0
    assert len(pd.read_csv(out / "per_structure.csv")) == 3


@pytest.fixture(scope="module")
def finetuned(pretrained, perov_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    code = main(["finetune", "--init", str(pretrained / "model.ckpt"), "--data", str(perov_small / "train.csv"),
                 "--val", str(perov_small / "val.csv"), "--target", "heat_ref", "--out", str(out), "--no-progress",
                 "--workers", "1", "property.timesteps=20", "train.max_steps=3", "train.batch_size=8", "eval_samples=5",
                 "train.warmup_steps=1"])
    assert code == 0
    return out


def test_finetune_outputs(finetuned, pretrained):
    metrics = json.loads((finetuned / "val_metrics.json").read_text())
    assert metrics["target"] == "heat_ref" and metrics["unit"] == "eV/atom" and metrics["val"]["count"] == 12
    assert 0.0 <= metrics["val"]["coverage95"] <= 1.0 and metrics["init_kind"] == "pretrain"
    assert (finetuned / "parity.png").stat().st_size > 0
    payload = load_checkpoint(finetuned / "model.ckpt", kind="finetune")
    pre = load_checkpoint(pretrained / "model.ckpt")
    # the encoder started from the pre-trained weights (same architecture, same keys)
    assert {k for k in payload["state_dict"] if k.startswith("encoder.")} == {k for k in pre["state_dict"] if k.startswith("encoder.")}
    assert payload["normalizer"]["target"] == "heat_ref"
    # the summary of the training crystals behind predict's per-row flags
    domain = payload["data"]["domain"]
    assert domain["crystals"] == metrics["train_count"] and set(domain["features"]) == {
        "atoms_per_cell", "volume_per_atom", "min_distance", "vacuum"} and domain["element_counts"]["O"] > 0
    # the spread's calibration, fitted on the validation crystals, is stored and reported
    scale = payload["normalizer"]["interval_scale"]
    assert scale > 0 and metrics["val"]["interval_scale"] == scale
    # the scale is the split-conformal one, recomputed here from the validation predictions: with 12
    # crystals the ceil(13 * 0.95)-th smallest ratio is the largest, so every crystal ends up covered
    val = pd.read_csv(finetuned / "val_predictions.csv")
    y, mean, low, high = (val[c].to_numpy(float) for c in ("y", "mean", "p2.5", "p97.5"))
    need = np.where(y >= mean, (y - mean) / (high - mean), (mean - y) / (mean - low))
    assert metrics["val"]["calibration"]["count"] == 12 == len(need)
    assert scale == pytest.approx(max(need.max(), 1e-6), rel=1e-9)
    assert metrics["val"]["coverage95_calibrated"] == 1.0
    assert metrics["val"]["coverage95"] == pytest.approx(float(np.mean(need <= 1.0)))


def test_finetune_unknown_target_is_a_clear_error(pretrained, perov_small, tmp_path, capsys):
    code = main(["finetune", "--init", str(pretrained / "model.ckpt"), "--data", str(perov_small / "train.csv"),
                 "--target", "nonsense", "--out", str(tmp_path), "--no-progress", "--workers", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "heat_ref" in err and "Traceback" not in err


def test_predict_cli_and_python_api(finetuned, tmp_path):
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(finetuned / "model.ckpt"), "examples/structures", "--samples", "10",
                 "--out", str(out), "--device", "cpu"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["id", "source", "mean", "std", "p2.5", "p97.5", "unit", "n_atoms", "n_atoms_model", "cell", "flags"]
    # a new fine-tuning sees canonical cells: silicon's 8-atom conventional CIF is predicted from its 2-atom cell
    assert table.set_index("id").loc["Si_diamond", ["n_atoms", "n_atoms_model", "cell"]].tolist() == [8, 2, "canonical"]
    assert len(table) == 10 and (table["p2.5"] <= table["p97.5"]).all() and (table["unit"] == "eV/atom").all()

    import crysdiff
    from pymatgen.core import Lattice, Structure

    raw = tmp_path / "raw.csv"
    assert main(["predict", "--model", str(finetuned / "model.ckpt"), "examples/structures", "--samples", "10",
                 "--out", str(raw), "--device", "cpu", "--raw-interval"]) == 0
    raw = pd.read_csv(raw)
    scale = load_checkpoint(finetuned / "model.ckpt")["normalizer"]["interval_scale"]
    np.testing.assert_allclose(table["mean"], raw["mean"], rtol=1e-6)
    np.testing.assert_allclose(table["p97.5"] - table["mean"], scale * (raw["p97.5"] - raw["mean"]), rtol=1e-5, atol=1e-8)

    predictor = crysdiff.load(finetuned / "model.ckpt", device="cpu")
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    frame = predictor.predict([nacl], samples=10)
    assert len(frame) == 1 and frame["std"].iloc[0] >= 0
    # a new fine-tuning reports the chain's exact mean (no seed in it) and draws its interval from the
    # chain's end-point law: another seed moves the interval, not the mean
    other = predictor.predict([nacl], samples=10, seed=1)
    assert other["mean"].iloc[0] == frame["mean"].iloc[0] and other["p97.5"].iloc[0] != frame["p97.5"].iloc[0]


def test_predict_skips_bad_records_and_fails_when_nothing_is_usable(finetuned, tmp_path, capsys):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree("examples/structures", folder)
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 4.0\n")
    out = tmp_path / "preds.json"
    assert main(["predict", "--model", str(finetuned / "model.ckpt"), str(folder), "--samples", "5", "--out", str(out),
                 "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert len(report["predictions"]) == 10 and report["unit"] == "eV/atom"
    assert ["broken.cif" in s["source"] + s["record"] for s in report["skipped"]] == [True]
    assert "broken.cif" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.cif").write_text("data_broken\n")
    assert main(["predict", "--model", str(finetuned / "model.ckpt"), str(empty), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no usable" in err and "Traceback" not in err


def test_calibrate_refits_the_interval_and_keeps_the_model(finetuned, perov_small, tmp_path, capsys):
    """crysdiff calibrate on 30 labelled crystals the model has not seen: a copy of the model with the
    new scale and its report; the weights, and so the mean predictions, are unchanged; the interval
    moves by the ratio of the new scale to the old."""
    model = finetuned / "model.ckpt"
    original = model.read_bytes()
    out, report_path = tmp_path / "calibrated.ckpt", tmp_path / "calibration.json"
    common = ["calibrate", "--model", str(model), "--data", str(perov_small / "calib.csv"), "--samples", "10",
              "--device", "cpu"]
    assert main([*common, "--out", str(out), "--report", str(report_path)]) == 0
    assert "cross-fitted" in capsys.readouterr().out
    assert model.read_bytes() == original
    old, new = load_checkpoint(model, kind="finetune"), load_checkpoint(out, kind="finetune")
    report = new["calibrations"][-1]
    assert report == {k: v for k, v in json.loads(report_path.read_text()).items() if k != "out"}
    assert report["count"] == 30 and report["label_column"] == "heat_ref" and report["samples"] == 10
    assert new["normalizer"]["interval_scale"] == report["scale"] > 0
    assert report["previous_scale"] == old["normalizer"]["interval_scale"]
    # 30 crystals: the scale is the largest of the 30 ratios, each half's (15: the largest of 15) that of
    # the other half, so the scale on all of them is the larger fold scale; it covers all 30 but perhaps
    # the one crystal that set it, which sits on its interval's edge (the percentiles are recomputed)
    assert len(report["crossfit_fold_scales"]) == 2
    assert report["scale"] == pytest.approx(max(report["crossfit_fold_scales"]), rel=1e-9)
    assert report["coverage95_after"] >= 29 / 30
    covered = report["coverage95_crossfit"] * 30  # each half scored with the other half's scale
    assert covered == pytest.approx(round(covered)) and 15 <= round(covered) <= 30
    assert old["state_dict"].keys() == new["state_dict"].keys()
    assert all(torch.equal(old["state_dict"][k], new["state_dict"][k]) for k in old["state_dict"] if k != "y_interval_scale")
    assert float(new["state_dict"]["y_interval_scale"]) == report["scale"]  # the scale the model reads
    assert {k: v for k, v in new["normalizer"].items() if k != "interval_scale"} == \
        {k: v for k, v in old["normalizer"].items() if k != "interval_scale"}
    # the scale is fitted about the mean the model reports (its chain's exact mean, not the mean of the
    # 10 samples), so predicting the same crystals with the same draws covers what the report says, and
    # the crystal that set the scale (the largest of the 30 ratios) lies on its interval's edge
    from crysdiff.predict import load

    assert load(out).model.exact_mean
    calib = tmp_path / "calib_predictions.csv"
    assert main(["predict", "--model", str(out), str(perov_small / "calib.csv"), "--samples", "10", "--out", str(calib),
                 "--device", "cpu"]) == 0
    predicted, labels = pd.read_csv(calib), pd.read_csv(perov_small / "calib.csv")
    y = labels.set_index("material_id")["heat_ref"].loc[predicted["id"]].to_numpy()
    inside = (predicted["p2.5"].to_numpy() <= y) & (y <= predicted["p97.5"].to_numpy())
    assert inside.mean() == pytest.approx(report["coverage95_after"], abs=1e-12)
    edge = np.minimum(np.abs(y - predicted["p2.5"].to_numpy()), np.abs(y - predicted["p97.5"].to_numpy()))
    assert edge.min() < 1e-6 * np.abs(y).max()  # the CSV keeps about 10 digits

    tables = {}
    for name, path in (("old", model), ("new", out)):
        csv = tmp_path / f"{name}.csv"
        assert main(["predict", "--model", str(path), "examples/structures", "--samples", "10", "--out", str(csv),
                     "--device", "cpu"]) == 0
        tables[name] = pd.read_csv(csv)
    np.testing.assert_allclose(tables["new"]["mean"], tables["old"]["mean"], rtol=1e-6)
    ratio = report["scale"] / report["previous_scale"]
    np.testing.assert_allclose(tables["new"]["p97.5"] - tables["new"]["mean"],
                               ratio * (tables["old"]["p97.5"] - tables["old"]["mean"]), rtol=1e-4, atol=1e-7)


def test_calibrate_never_writes_over_earlier_work_and_says_what_is_wrong(finetuned, perov_small, tmp_path, capsys):
    model = finetuned / "model.ckpt"
    original = model.read_bytes()
    common = ["calibrate", "--model", str(model), "--samples", "5", "--device", "cpu"]
    calib = ["--data", str(perov_small / "calib.csv")]
    # the model itself, and an existing file without --force, are never replaced
    assert main([*common, *calib, "--out", str(model), "--force"]) == 2
    assert "model being calibrated" in capsys.readouterr().err and model.read_bytes() == original
    earlier = tmp_path / "earlier.ckpt"
    earlier.write_bytes(b"the user's earlier work")
    assert main([*common, *calib, "--out", str(earlier)]) == 2
    assert "--force" in capsys.readouterr().err and earlier.read_bytes() == b"the user's earlier work"
    assert main([*common, *calib, "--out", str(earlier), "--force"]) == 0
    assert load_checkpoint(earlier, kind="finetune")["calibrations"][-1]["count"] == 30
    capsys.readouterr()
    # 12 labelled crystals cannot calibrate a 95% interval
    assert main([*common, "--data", str(perov_small / "val.csv"), "--out", str(tmp_path / "few.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "12 crystals" in err and "at least 20" in err and not (tmp_path / "few.ckpt").exists()
    # a label column the data does not have: the error lists the ones it has
    assert main([*common, *calib, "--target", "nonsense", "--out", str(tmp_path / "x.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "heat_ref" in err and "Traceback" not in err
    # calibrating on the training data works, with a warning that the interval comes out too narrow
    assert main([*common, "--data", str(perov_small / "train.csv"), "--out", str(tmp_path / "train.ckpt")]) == 0
    assert "training data" in capsys.readouterr().err


def _finetune_tiny(pretrained, perov_small, out, *extra):
    assert main(["finetune", "--init", str(pretrained / "model.ckpt"), "--data", str(perov_small / "train.csv"),
                 "--val", str(perov_small / "val.csv"), "--target", "heat_ref", "--out", str(out), "--no-progress",
                 "--workers", "1", "property.timesteps=20", "train.max_steps=3", "train.batch_size=8", "eval_samples=5",
                 "train.warmup_steps=1", *extra]) == 0
    return out / "model.ckpt"


def test_a_held_out_share_of_the_validation_crystals_chooses_nothing(pretrained, perov_small, tmp_path):
    """holdout_fraction: those crystals are kept out of the checkpoint choice and the interval's scale,
    and the shipped model is scored on them afterwards."""
    ckpt = _finetune_tiny(pretrained, perov_small, tmp_path / "held", "holdout_fraction=0.5")
    metrics = json.loads((tmp_path / "held" / "val_metrics.json").read_text())
    chose, held = (pd.read_csv(tmp_path / "held" / f"{name}_predictions.csv") for name in ("val", "holdout"))
    assert len(chose) == metrics["val"]["count"] == 6 and len(held) == metrics["holdout"]["count"] == 6
    assert not set(chose["id"]) & set(held["id"])  # 12 validation crystals, split in two
    payload = load_checkpoint(ckpt, kind="finetune")
    assert payload["data"]["val_count"] == 6 and payload["data"]["holdout_count"] == 6
    assert payload["metrics"]["holdout"]["mae"] == metrics["holdout"]["mae"]
    # the scale was fitted on the choosing half only, and the held-out half is scored with it
    assert metrics["val"]["calibration"]["count"] == 6 and "interval_scale" not in metrics["holdout"]
    y, mean = held["y"].to_numpy(float), held["mean"].to_numpy(float)
    assert metrics["holdout"]["mae"] == pytest.approx(float(np.abs(y - mean).mean()), rel=1e-9)
    inside = (held["p2.5"] <= held["y"]) & (held["y"] <= held["p97.5"])
    assert metrics["holdout"]["coverage95"] == pytest.approx(float(inside.mean()))


def test_an_ensemble_pools_the_members_samples(finetuned, pretrained, perov_small, tmp_path):
    """Two fine-tuning runs that differ only in --seed, used together: the ensemble's samples are
    each member's draws side by side, its summary is taken over all of them, and ``std_models`` is
    the spread of the members' means."""
    import crysdiff
    from crysdiff.loader import make_loader
    from crysdiff.cache import load_dataset

    second = _finetune_tiny(pretrained, perov_small, tmp_path / "s1", "--seed", "1")
    first = finetuned / "model.ckpt"
    ensemble = crysdiff.load([first, second], device="cpu")
    assert [m.path for m in ensemble.members] == [str(first), str(second)] and ensemble.target == "heat_ref"
    batch = next(iter(make_loader(load_dataset([perov_small / "val.csv"], progress=False), batch_size=6)))
    ensemble.widen = False
    out = ensemble.sample(batch, 7, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    members = [member.sample(batch, 7, generator) for member in ensemble.members]
    alone = [m["samples"] for m in members]
    assert out["samples"].shape == (6, 14)
    torch.testing.assert_close(out["samples"], torch.cat(alone, dim=1))
    # new fine-tunings report the chain's exact mean (exact_mean): the ensemble averages the members' means
    assert all(member.model.exact_mean for member in ensemble.members)
    reported = torch.stack([m["mean"] for m in members], dim=1)  # [6, 2]
    torch.testing.assert_close(out["mean"], reported.mean(dim=1))
    torch.testing.assert_close(out["std_models"], reported.std(dim=1))
    assert not torch.allclose(reported[:, 0], reported[:, 1])  # the seeds made different models
    means = torch.stack([a.mean(dim=1) for a in alone], dim=1)  # [6, 2]: the samples' means, which pooling moves
    # the default, widened pooling: each member moved by (sqrt(3) - 1) x its offset from the centre, so
    # the pooled variance is W + (1 + 1/M) B (here M = 2) and the mean is unchanged
    ensemble.widen = True
    widened = ensemble.sample(batch, 7, torch.Generator().manual_seed(3))["samples"]
    centre = means.mean(dim=1, keepdim=True)
    shift = (3 ** 0.5 - 1) * (means - centre)
    torch.testing.assert_close(widened, torch.cat([alone[0] + shift[:, :1], alone[1] + shift[:, 1:]], dim=1))
    within = torch.stack([a.var(dim=1, unbiased=False) for a in alone], dim=1).mean(dim=1)
    torch.testing.assert_close(widened.var(dim=1, unbiased=False), within + 1.5 * means.var(dim=1))
    torch.testing.assert_close(widened.mean(dim=1), means.mean(dim=1))

    preds = tmp_path / "preds.json"
    assert main(["predict", "--model", str(first), "--model", str(second), "examples/structures", "--samples", "5",
                 "--out", str(preds), "--device", "cpu"]) == 0
    report = json.loads(preds.read_text())
    assert report["models"] == [str(first), str(second)] and report["pooling"] == "widened"
    rows = pd.DataFrame(report["predictions"])
    assert list(rows.columns) == ["id", "source", "mean", "std", "p2.5", "p97.5", "std_models", "unit",
                                  "n_atoms", "n_atoms_model", "cell", "flags"]
    assert len(rows) == 10 and (rows["std_models"] > 0).all() and (rows["p2.5"] <= rows["p97.5"]).all()
    raw = tmp_path / "raw.json"
    assert main(["predict", "--model", str(first), "--model", str(second), "examples/structures", "--samples", "5",
                 "--out", str(raw), "--device", "cpu", "--as-drawn"]) == 0
    raw_rows = pd.DataFrame(json.loads(raw.read_text())["predictions"])
    assert json.loads(raw.read_text())["pooling"] == "as drawn"
    assert (raw_rows["std"] < rows["std"]).all()  # same draws (same seed), members' means not moved apart
    assert np.allclose(raw_rows["mean"], rows["mean"])


def test_an_ensemble_rejects_members_it_cannot_pool(finetuned, pretrained, perov_small, tmp_path, capsys):
    regression = _finetune_tiny(pretrained, perov_small, tmp_path / "reg", "head.kind=regression", "head.prior=mean")
    assert main(["predict", "--model", str(finetuned / "model.ckpt"), "--model", str(regression), "examples/structures",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(regression) in err and "diffusion heads" in err and "Traceback" not in err
    other = _finetune_tiny(pretrained, perov_small, tmp_path / "knn", "data.knn_neighbors=6")
    import crysdiff
    from crysdiff.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="knn_neighbors"):
        crysdiff.load([finetuned / "model.ckpt", other], device="cpu")


def test_refine_a_finetuned_model(finetuned, perov_small, tmp_path):
    out = tmp_path / "refined"
    assert main(["finetune", "--init", str(finetuned / "model.ckpt"), "--data", str(perov_small / "val.csv"),
                 "--target", "heat_ref", "--out", str(out), "--no-progress", "--workers", "1",
                 "property.timesteps=20", "train.max_steps=2", "train.batch_size=4", "eval_samples=5", "data.val_fraction=0.25"]) == 0
    assert json.loads((out / "val_metrics.json").read_text())["init_kind"] == "finetune"


def test_old_checkpoints_migrate_and_dropped_options_are_refused(finetuned, tmp_path, capsys):
    """A checkpoint written before the lower bound and interval scale were model state reads them
    from its normaliser and predicts the same; one written with a dropped head option is refused
    in one line that names the file and the option (exit code 2)."""
    import crysdiff
    from crysdiff.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(finetuned / "model.ckpt", kind="finetune")
    assert "y_interval_scale" in payload["state_dict"] and "y_lower_bound" in payload["state_dict"]
    header = ("format", "format_version", "crysdiff_version", "kind", "config", "state_dict")
    extra = {k: v for k, v in payload.items() if k not in header}

    def write(name, config, state, **changes):
        return save_checkpoint(tmp_path / name, kind="finetune", config=config, state_dict=state, **{**extra, **changes})

    state = {k: v for k, v in payload["state_dict"].items() if k not in ("y_interval_scale", "y_lower_bound")}
    old_head = dict(payload["config"]["head"], baseline="prior", composition=False, layers="last")  # as a2c511c wrote it
    old = write("old.ckpt", dict(payload["config"], head=old_head), state,
                normalizer=dict(payload["normalizer"], interval_scale=1.7))
    new = crysdiff.load(finetuned / "model.ckpt", device="cpu")
    migrated = crysdiff.load(old, device="cpu")
    assert migrated.model.interval_scale == 1.7 and migrated.model.lower_bound == new.model.lower_bound
    new.model.calibrate(interval_scale=1.7, lower_bound=new.model.lower_bound)
    pd.testing.assert_frame_equal(migrated.predict(["examples/structures"], samples=5),
                                  new.predict(["examples/structures"], samples=5), check_exact=True)
    config = dict(payload["config"], head=dict(payload["config"]["head"], composition=True))
    dropped = write("dropped.ckpt", config, payload["state_dict"])
    assert main(["predict", "--model", str(dropped), "examples/structures", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(dropped) in err and "head.composition=true" in err and "Traceback" not in err
