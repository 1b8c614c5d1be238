"""The throughput benchmark counts matrix-product FLOPs and records them with the machine's rate."""

from __future__ import annotations

import json

import torch

from benchmarks import denoiser_speed as bench
from crysdiff.batching import collate_crystals
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig
from crysdiff.diffusion import DiffusionConfig, JointDiffusion

TINY = dict(hidden_dim=16, num_layers=1, num_frequencies=2, time_dim=4)


def test_counted_flops_are_positive_and_repeatable(crystals):
    batch = collate_crystals(crystals)
    config, diffusion = DenoiserConfig(**TINY), JointDiffusion(DiffusionConfig())
    torch.manual_seed(0)
    train = bench.training_step(CrysDiffDenoiser(config), diffusion, reference=False)
    infer = bench.inference_step(CrysDiffDenoiser(config))
    counts = [bench.count_flops(train, batch), bench.count_flops(train, batch)]
    forward = bench.count_flops(infer, batch)
    assert counts[0] > 0 and counts[0] == counts[1]
    assert forward > 0 and forward == bench.count_flops(infer, batch)
    assert counts[0] > 1.5 * forward  # the backward pass's products are counted too
    # the straightforward path does the per-edge matmuls the fast path avoids
    reference = bench.training_step(CrysDiffDenoiser(config), diffusion, reference=True)
    assert bench.count_flops(reference, batch) > counts[0]
    rate = bench.matmul_rate(64, 16, 16, seconds=0.0)
    assert rate["shape"] == [64, 16, 16] and rate["reps"] >= 3 and rate["gflop_per_s"] > 0


def test_results_json_has_flops_rates_and_ratios_against_a_revision(tmp_path):
    out = tmp_path / "speed.json"
    args = ["--repeats", "2", "--matmul-seconds", "0", "--matmul-size", "32", "--crystals", "4", "--batch-size", "2",
            "--skip-memory", "--against", "HEAD", "--levers", "fused", "--out", str(out),
            "--config", *(f"{k}={v}" for k, v in TINY.items())]
    assert bench.main(args) == 0
    results = json.loads(out.read_text())
    assert results["config"]["hidden_dim"] == 16 and results["against"]["revision"] == "HEAD"
    labels = ("fast", "fast_fused", "inference_fast", "reference", "against", "inference_against")
    for name in ("mp2018", "perov_5"):
        row = results["datasets"][name]
        assert set(row["matmul"]) == {"edge_mlp", "pair_fourier", "square_32"}
        assert row["matmul"]["edge_mlp"]["shape"] == [round(row["mean_edges_per_batch"]), 16, 16]
        for label in labels:
            step = row[label]
            assert len(step["pass_seconds"]) == 2 and step["steps_per_pass"] == 2
            assert step["flops_per_step"] > 0 and step["gflop_per_s"] > 0 and step["crystals_per_s"] > 0
            for shape, fraction in row["fraction_of_matmul_rate"][label].items():
                assert abs(fraction - step["gflop_per_s"] / row["matmul"][shape]["gflop_per_s"]) < 1e-12
        # the committed revision's denoiser does the same matrix products as today's
        assert row["against"]["flops_per_step"] == row["fast"]["flops_per_step"]
        for key in ("speedup", "fast_over_against", "inference_fast_over_against", "fast_fused_over_fast"):
            assert row[key] > 0


def test_a_revision_loads_beside_todays_code_and_computes_the_same(crystals):
    old = bench.load_revision("HEAD")
    assert old.__name__.startswith("crysdiff_") and old.__name__ != "crysdiff.denoiser"
    assert old.CrysDiffDenoiser is not CrysDiffDenoiser and old.scatter_mean.__module__.startswith(old.__name__.split(".")[0])
    config = DenoiserConfig(**TINY)
    torch.manual_seed(0)
    today = CrysDiffDenoiser(config)
    committed = bench.denoiser_of(old, config, today.state_dict())
    batch = collate_crystals(crystals)
    t = torch.full((batch.num_atoms.shape[0],), 200)
    with torch.no_grad():
        a, b = today(batch, batch.frac_coords, batch.lattice, t), committed(batch, batch.frac_coords, batch.lattice, t)
    torch.testing.assert_close(a["score_frac"], b["score_frac"], rtol=1e-5, atol=1e-6)


def test_profile_counts_operator_calls_of_a_step(crystals):
    import sys

    sys.path.insert(0, str(bench.REPO / "benchmarks"))
    import profile_step

    batch = collate_crystals(crystals)
    torch.manual_seed(0)
    step = bench.training_step(CrysDiffDenoiser(DenoiserConfig(**TINY)), JointDiffusion(DiffusionConfig()), reference=False)
    one, two = profile_step.profile_steps(step, batch, 1), profile_step.profile_steps(step, batch, 2)
    calls = profile_step.leaf_calls(one)
    # the same kernels every step (within 5%: an op whose time rounds to 0 µs is not counted)
    assert calls > 100 and abs(profile_step.leaf_calls(two) - 2 * calls) <= 0.05 * 2 * calls
    assert any(e.key == "aten::mm" for e in one)
