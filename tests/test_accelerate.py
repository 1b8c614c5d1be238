"""``train.compile``: the compiled forward falls back to eager when compilation fails, keeps weights and
copies intact, and (opt-in, slow) computes what the eager forward computes."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from crysdiff import accelerate
from crysdiff.batching import collate_crystals
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig


def _fresh_class():
    class Tiny(nn.Module):  # a class of its own per test: fallbacks are remembered per class
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, x):
            if x.shape[-1] != 3:
                raise ValueError("bad input width")
            return self.linear(x).square()

    return Tiny


def _failing_compile(fn, **kwargs):
    def compiled(*args, **kw):
        raise RuntimeError("no C compiler found\nlong traceback")

    return compiled


def test_failed_compilation_warns_once_and_runs_eager(monkeypatch, capsys):
    monkeypatch.setattr(accelerate.torch, "compile", _failing_compile)
    torch.manual_seed(0)
    module = _fresh_class()()
    x = torch.randn(4, 3)
    expected = module(x)
    keys = list(module.state_dict())
    assert accelerate.compile_module(module) is module and accelerate.is_compiled(module)
    assert torch.equal(module(x), expected)
    said = capsys.readouterr().err
    assert "torch.compile of Tiny failed (RuntimeError: no C compiler found); running eager" in said
    assert torch.equal(module(x), expected)
    assert capsys.readouterr().err == ""  # no second warning, no second attempt
    assert list(module.state_dict()) == keys  # checkpoints keep their keys


def test_an_input_error_is_raised_as_the_eager_forward_raises_it(monkeypatch):
    monkeypatch.setattr(accelerate.torch, "compile", _failing_compile)
    module = accelerate.compile_module(_fresh_class()())
    with pytest.raises(ValueError, match="bad input width"):
        module(torch.randn(4, 5))


def test_disabled_is_a_no_op_and_a_copy_runs_its_own_weights(monkeypatch):
    monkeypatch.setattr(accelerate.torch, "compile", _failing_compile)
    module = _fresh_class()()
    assert accelerate.compile_module(module, enabled=False) is module and not accelerate.is_compiled(module)
    accelerate.compile_module(module)
    twin = copy.deepcopy(module)  # as the weight average copies the network
    with torch.no_grad():
        twin.linear.weight.zero_()
        twin.linear.bias.fill_(1.0)
    assert accelerate.is_compiled(twin) and twin.forward.__self__ is twin
    assert torch.equal(twin(torch.randn(2, 3)), torch.ones(2, 2))


@pytest.mark.skipif(not os.environ.get("CRYSDIFF_TEST_COMPILE"),
                    reason="torch.compile takes minutes on a small CPU; set CRYSDIFF_TEST_COMPILE=1 to run")
def test_compiled_denoiser_matches_eager_forward_and_gradients(crystals):
    batch = collate_crystals(crystals)
    config = DenoiserConfig(hidden_dim=16, num_layers=1, num_frequencies=2, time_dim=4)
    torch.manual_seed(0)
    eager = CrysDiffDenoiser(config)
    compiled = accelerate.compile_module(copy.deepcopy(eager))
    t = torch.full((batch.num_atoms.shape[0],), 300)
    outs = []
    for model in (eager, compiled):
        out = model(batch, batch.frac_coords, batch.lattice, t)
        (out["eps_lattice"].square().sum() + out["score_frac"].square().sum()).backward()
        outs.append((out["score_frac"], [p.grad for p in model.parameters()]))
    assert accelerate.is_compiled(compiled) and compiled.__class__ not in accelerate._FAILED
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    for got, want in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
