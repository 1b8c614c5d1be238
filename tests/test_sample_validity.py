"""Physical validity of generated structures (crysdiff.csp.validity) and ``crysdiff sample
--valid-only``'s redrawing, with a stand-in sampler whose outputs are known."""

from __future__ import annotations

import numpy as np

from crysdiff.commands.sample import _draw_until_valid
from crysdiff.crystal import Crystal
from crysdiff.csp import DEFAULT_VOLUME_PER_ATOM, validity, volume_range


def _pair(distance: float, a: float = 4.0) -> Crystal:
    """Two Na atoms ``distance`` Å apart along x in a cubic cell of edge ``a``."""
    return Crystal(atomic_numbers=np.array([11, 11]), frac_coords=np.array([[0.0, 0, 0], [distance / a, 0, 0]]),
                   lattice=np.eye(3) * a)


def test_validity_checks_distance_and_volume():
    assert validity(_pair(2.0)) == ""
    assert "closer than" in validity(_pair(0.3))
    assert "volume per atom" in validity(_pair(2.0, a=40.0))  # 32,000 Å³ per atom
    assert "volume per atom" in validity(_pair(0.9, a=1.8))  # 2.9 Å³ per atom
    assert validity(_pair(2.0, a=40.0), volumes=(1.0, 1e5)) == ""


def test_volume_range_from_the_checkpoint_or_the_default():
    assert volume_range({"train": {"volume_per_atom": {"min": 3.0, "max": 50.0}}}) == (3.0, 50.0)
    assert volume_range({"train": {"num_crystals": 10}}) == DEFAULT_VOLUME_PER_ATOM


def test_valid_only_draws_the_invalid_ones_again_up_to_the_cap():
    outcomes = [[True, False, False], [False, False], [True, False], [False]]  # valid? per call, per job drawn
    calls = []

    def draw(compositions, round_):
        calls.append(len(compositions))
        return [_pair(2.0) if ok else _pair(0.2) for ok in outcomes[round_]]

    jobs = [("Na", k, np.array([11, 11])) for k in range(3)]
    crystals, reasons, draws = _draw_until_valid(draw, jobs, DEFAULT_VOLUME_PER_ATOM, max_draws=4)
    assert [bool(r) for r in reasons] == [False, False, True]
    assert draws == [1, 3, 4] and calls == [3, 2, 2, 1]
    calls.clear()
    _, reasons, draws = _draw_until_valid(draw, jobs, DEFAULT_VOLUME_PER_ATOM, max_draws=1)  # no --valid-only
    assert draws == [1, 1, 1] and calls == [3] and [bool(r) for r in reasons] == [False, True, True]


def test_model_is_a_path_or_a_shipped_name(tmp_path, capsys):
    from crysdiff.cli import main
    from crysdiff.commands.sample import DEFAULT_MODEL, resolve_model, shipped_models

    assert {DEFAULT_MODEL, "pretrained_pool"} <= set(shipped_models())  # the earlier default stays by name
    assert resolve_model(DEFAULT_MODEL) == shipped_models()[DEFAULT_MODEL]
    assert resolve_model("pretrained_pool").name == "pretrained_pool.ckpt"
    assert main(["sample", "--model", "no_such_model", "--composition", "NaCl", "--out", str(tmp_path / "s"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no_such_model" in err and DEFAULT_MODEL in err
    assert not (tmp_path / "s").exists()


def test_sample_defaults_to_the_chosen_model_and_sampler():
    import argparse

    from crysdiff.commands.sample import DEFAULT_MODEL, add_arguments, sampler_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--composition", "NaCl", "--out", "s"])
    assert args.model == DEFAULT_MODEL == "pretrained_pool_long2"
    assert sampler_settings(args) == {"corrector_steps": 1, "step_lr": 1e-5, "lattice_snr": 0.1,
                                      "timesteps": None, "schedule": "linear", "late_below": 500,
                                      "late_corrector_steps": None, "late_step_lr": 3e-5}
