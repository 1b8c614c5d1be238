"""The prediction-cost benchmark's timers add each part's seconds and leave the objects as they were."""

from __future__ import annotations

import time

from benchmarks.predict_cost import PARTS, part_timers


class _Head:
    def chain_coefficients(self, z):
        time.sleep(0.02)
        return z


class _Model:
    head = _Head()

    def encode(self, batch):
        time.sleep(0.01)
        return batch


class _Diffusion:
    def sample_affine(self, coeffs):
        time.sleep(0.03)
        return coeffs


def test_part_timers_add_each_parts_seconds_and_unwrap():
    model, diffusion = _Model(), _Diffusion()
    totals = dict.fromkeys(PARTS, 0.0)
    with part_timers(model, diffusion, totals):
        assert model.encode(1) == 1 and model.encode(2) == 2
        assert model.head.chain_coefficients(3) == 3 and diffusion.sample_affine(4) == 4
    # sleeps last at least as long as asked (only lower bounds: the machine may be loaded)
    assert totals["encoder_forward"] >= 0.02 and totals["head_coefficients"] >= 0.02 and totals["y_chain"] >= 0.03
    assert "encode" not in vars(model) and "sample_affine" not in vars(diffusion)  # the methods are back
    before = dict(totals)
    model.encode(5), diffusion.sample_affine(6)
    assert totals == before
