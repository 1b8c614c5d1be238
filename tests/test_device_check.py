"""The checks of ``scripts/device_check.sh``: each runs on the CPU in the normal suite (small budgets)
and, marked ``cuda``, on a CUDA GPU, where ``device_check.sh`` selects them with ``-m cuda``
(skipped without a GPU). Both precisions the engine uses on a GPU are checked: float32 and bf16
autocast (``bf16-mixed``), which the CPU can run too.

Tolerances: float32 outputs agree to 1e-4 of their largest entry under the symmetries; under bf16
autocast to 2e-2 (bf16 keeps 8 bits of mantissa, so each matmul rounds at about 4e-3), and stay as
close to the float32 outputs. ``crysdiff predict`` on the device and on the CPU draw independent
samples, so their means agree to Monte-Carlo error: within 4 standard errors of the difference of
two ``S``-sample means, plus 1e-3 in the target's unit.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CUDA, EXAMPLES

from crysdiff.batching import collate_crystals
from crysdiff.checkpoint import load_checkpoint
from crysdiff.cli import main
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig
from crysdiff.symmetry import (permute_atoms, random_orthogonal, random_permutation, rotate_lattice, shift_all,
                               shift_one_atom_by_lattice_vector)

DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
PRECISIONS = ["32-true", "bf16-mixed"]
SMALL = DenoiserConfig(hidden_dim=32, num_layers=2, num_frequencies=16, time_dim=16)
TINY_MODEL = ["model.hidden_dim=16", "model.num_layers=1", "model.num_frequencies=4", "model.time_dim=8"]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="module")
def mp_small(shared_data, tmp_path_factory):
    """48 mp2018 crystals to train on and 16 to validate on, as CDVAE-style CSVs."""
    table = pd.read_csv(shared_data / "mp2018" / "val.csv.gz", nrows=64)
    root = tmp_path_factory.mktemp("mp")
    table.iloc[:48].to_csv(root / "train.csv", index=False)
    table.iloc[48:].to_csv(root / "val.csv", index=False)
    return root


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def _largest_gap(a: dict, b: dict, keys) -> float:
    """Largest difference of ``a[k]`` and ``b[k]`` over ``keys``, relative to the largest entry of ``a``."""
    return max(float((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max()) for k in keys)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_denoiser_symmetries_on_the_device(crystals, device, precision):
    """O(3), periodic translations (an atom moved by a lattice vector, unwrapped, too) and
    permutations, on the device, in float32 and under bf16 autocast."""
    torch.manual_seed(0)
    model = CrysDiffDenoiser(SMALL).eval()
    with torch.no_grad():  # at initialisation the Fourier features weigh little; make them count, as in training
        for layer in model.encoder.layers:
            layer.edge_in.weight[:, 2 * SMALL.hidden_dim + 6:] *= 20
    model = model.to(device)
    batch = collate_crystals(crystals).to(device)
    t = torch.randint(1, 1001, (batch.num_atoms.shape[0],), generator=torch.Generator().manual_seed(0)).to(device)
    tol = 1e-4 if precision == "32-true" else 2e-2

    def run(b, precision=precision):
        with torch.no_grad(), _autocast(device, precision):
            return model(b, b.frac_coords, b.lattice, t)

    out, keys = run(batch), ("eps_lattice", "score_frac")
    if precision != "32-true":
        assert _largest_gap(run(batch, "32-true"), out, keys) < tol
    q = random_orthogonal(3, reflect=True).to(device, torch.float32)
    rotated = run(rotate_lattice(batch, q))
    assert _largest_gap(out, {**rotated, "eps_lattice": rotated["eps_lattice"].double() @ q.double()}, keys) < tol
    shift = torch.rand(batch.num_atoms.shape[0], 3, generator=torch.Generator().manual_seed(1)).to(device)
    assert _largest_gap(out, run(shift_all(batch, shift)), keys) < tol
    assert _largest_gap(out, run(shift_one_atom_by_lattice_vector(batch, 3, (1, -2, 5))), keys) < tol
    perm = random_permutation(batch, 2)
    permuted = run(permute_atoms(batch, perm))
    inverse = torch.as_tensor(np.argsort(perm), device=device)
    assert _largest_gap(out, {**permuted, "score_frac": permuted["score_frac"][inverse]}, keys) < tol


@pytest.mark.parametrize("precision", PRECISIONS)
def test_property_model_symmetries_and_prediction_on_the_device(crystals, device, precision):
    """The property model's crystal features are invariant on the device, and its prediction (the
    CARD chain with a generator on the device) is finite."""
    from crysdiff.card import PropertyDiffusion, PropertyDiffusionConfig
    from crysdiff.finetune import FinetuneConfig, build_property_model

    torch.manual_seed(0)
    config = FinetuneConfig(target="y", model=SMALL, property=PropertyDiffusionConfig(timesteps=50))
    model = build_property_model(config, mean=1.0, std=2.0).to(device).eval()
    batch = collate_crystals(crystals).to(device)
    tol = 1e-4 if precision == "32-true" else 2e-2

    def features(b):
        with torch.no_grad(), _autocast(device, precision):
            return {"z": model.encode(b)}

    out = features(batch)
    q = random_orthogonal(4).to(device, torch.float32)
    assert _largest_gap(out, features(rotate_lattice(batch, q)), ["z"]) < tol
    assert _largest_gap(out, features(shift_one_atom_by_lattice_vector(batch, 0, (3, 1, -4))), ["z"]) < tol
    assert _largest_gap(out, features(permute_atoms(batch, random_permutation(batch, 5))), ["z"]) < tol
    generator = torch.Generator(device=device).manual_seed(0)
    with _autocast(device, precision):
        pred = model.predict(batch, PropertyDiffusion(config.property), num_samples=8, generator=generator)
    assert pred["mean"].device.type == device.type and torch.isfinite(pred["mean"]).all()


def _accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_pretrain_then_finetune_end_to_end(mp_small, device, precision, tmp_path):
    """``crysdiff pretrain`` then ``crysdiff finetune --init`` with ``train.accelerator`` and
    ``train.precision`` set: both finish, record the device they trained on, and log finite losses."""
    hardware = [f"train.accelerator={_accelerator(device)}", "train.devices=1", f"train.precision={precision}"]
    common = ["--val", str(mp_small / "val.csv"), "--no-progress", "--workers", "1", *hardware, "train.batch_size=16",
              "train.warmup_steps=1", "train.log_every_steps=1"]
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert main(["pretrain", "--data", str(mp_small / "train.csv"), "--out", str(pre), *common, *TINY_MODEL,
                 "diffusion.timesteps=20", "train.max_steps=4"]) == 0
    assert main(["finetune", "--init", str(pre / "model.ckpt"), "--data", str(mp_small / "train.csv"), "--out", str(fine),
                 "--target", "formation_energy_per_atom", *common, "property.timesteps=20", "train.max_steps=4",
                 "eval_samples=4", "report_samples=8"]) == 0
    for out, kind in ((pre, "pretrain"), (fine, "finetune")):
        payload = load_checkpoint(out / "model.ckpt", kind=kind)
        assert payload["training"]["steps"] == 4
        assert payload["training"]["device"].startswith(device.type), payload["training"]
        losses = pd.read_csv(out / "logs" / "metrics.csv")["train/loss"].dropna()
        assert len(losses) > 0 and np.isfinite(losses.values).all()
    metrics = json.loads((fine / "val_metrics.json").read_text())["val"]
    assert metrics["count"] == 16 and np.isfinite(metrics["mae"])


@pytest.mark.parametrize("device", [pytest.param(torch.device("cuda"), marks=CUDA)])
def test_ddp_with_nccl_on_one_gpu(mp_small, device, tmp_path):
    """``train.strategy=ddp`` on one GPU, in a process of its own (the process group outlives the run):
    the NCCL group starts, training runs and rank 0 exports the model. (DDP with gloo on the CPU, two
    processes, is ``tests/test_distributed.py``.)"""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "crysdiff", "pretrain", "--data", str(mp_small / "train.csv"), "--val",
                           str(mp_small / "val.csv"), "--out", str(out), "--no-progress", "--workers", "1", *TINY_MODEL,
                           "diffusion.timesteps=20", "train.max_steps=3", "train.batch_size=8",
                           f"train.accelerator={_accelerator(device)}", "train.devices=1", "train.strategy=ddp"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    training = load_checkpoint(out / "model.ckpt", kind="pretrain")["training"]
    assert training["steps"] == 3 and training["device"].startswith(device.type)


def test_predict_on_the_device_matches_the_cpu(device, tmp_path):
    """``crysdiff predict --device`` against the CPU on the bundled examples: same means up to the
    Monte-Carlo error of ``S`` samples each (see the module docstring). On the CPU itself the two runs
    use different seeds, so the comparison is not trivially exact there either."""
    samples, runs = 200, {}
    for name, where, seed in (("device", device.type, 0), ("cpu", "cpu", 0 if device.type != "cpu" else 1)):
        out = tmp_path / f"{name}.csv"
        assert main(["predict", "--model", "formation_energy_per_atom", str(EXAMPLES), "--samples", str(samples),
                     "--device", where, "--seed", str(seed), "--out", str(out)]) == 0
        runs[name] = pd.read_csv(out).set_index("id")
    a, b = runs["device"], runs["cpu"].loc[runs["device"].index]
    assert len(a) == 10 and np.isfinite(a["mean"]).all()
    error = np.sqrt((a["std"] ** 2 + b["std"] ** 2) / samples)
    gap = (a["mean"] - b["mean"]).abs()
    assert (gap <= 4 * error + 1e-3).all(), pd.DataFrame({"gap": gap, "allowed": 4 * error + 1e-3})


def test_a_killed_run_resumes_from_its_last_checkpoint(mp_small, device, tmp_path):
    """SIGKILL mid-epoch, then ``--resume``, on the device: training continues from the last step
    checkpoint, and what was written before the kill (checkpoints, the log) stays readable. (The
    resumed run is given a shorter step budget only to keep the test short.)"""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = ["pretrain", "--data", str(mp_small / "train.csv"), "--val", str(mp_small / "val.csv"), "--out", str(out),
            "--no-progress", "--workers", "1", *TINY_MODEL, "diffusion.timesteps=20", "train.batch_size=2",
            f"train.accelerator={_accelerator(device)}", "train.devices=1",
            "train.warmup_steps=1", "train.log_every_steps=1", "train.checkpoint_every_steps=3"]
    process = subprocess.Popen([sys.executable, "-m", "crysdiff", *args, "train.max_steps=100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120

    def logged_first_step() -> bool:
        # Lightning's CSV writer rewrites the whole file when a new column appears; wait until the
        # first training rows are on disk, so the kill tests keeping the log, not that race
        from crysdiff.engine import read_metrics

        try:
            return any(row.get("step") == 0 and "train/loss" in row for row in read_metrics(out))
        except Exception:  # a file caught mid-write
            return False

    try:
        while time.time() < deadline and process.poll() is None:
            if last.is_file() and torch.load(last, weights_only=False)["global_step"] >= 6 and logged_first_step():
                break
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = torch.load(last, weights_only=False)
    assert 6 <= killed_at["global_step"] < 100000 and not (out / "model.ckpt").exists()
    assert not [p for p in (out / "checkpoints").iterdir() if p.suffix != ".ckpt"]  # no half-written files
    resumed_budget = killed_at["global_step"] + 6
    assert main([*args, "--resume", f"train.max_steps={resumed_budget}"]) == 0
    final = load_checkpoint(out / "model.ckpt", kind="pretrain")
    assert final["training"]["steps"] == resumed_budget
    from crysdiff.engine import read_metrics

    steps = [row["step"] for row in read_metrics(out) if "train/loss" in row]
    assert min(steps) == 0 and max(steps) >= resumed_budget - 1  # the killed run's log is kept, then continued
    assert (out / "logs" / "metrics-part1.csv").is_file()
