"""Sampling: shapes, determinism, and recovery of a known structure with an oracle denoiser."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

from crysdiff.batching import collate_crystals
from crysdiff.crystal import from_pymatgen, validate
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig
from crysdiff.diffusion import DiffusionConfig, JointDiffusion, wrapped_normal_score
from crysdiff.sampling import sample_structures, time_schedule


@pytest.fixture(scope="module")
def three(shared_data):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = pd.read_csv(shared_data / "mp2018" / "val.csv.gz", nrows=3)
        return [validate(from_pymatgen(Structure.from_str(c, fmt="cif"))) for c in rows["cif"]]


@pytest.fixture(scope="module")
def batch(three):
    return collate_crystals(three)


class Oracle:
    """The exact denoiser for a data distribution that is a single known structure per crystal."""

    def __init__(self, diffusion: JointDiffusion, frac_coords: torch.Tensor, lattice: torch.Tensor):
        self.diffusion, self.frac, self.lattice = diffusion, frac_coords.double(), lattice.double()

    def parameters(self):
        return iter([])

    def __call__(self, batch, frac_coords, lattice, t):
        ab = self.diffusion.alpha_bar[t][:, None, None]
        eps = (lattice - ab.sqrt() * self.lattice) / (1 - ab).sqrt()
        t_atom = t[batch.batch]
        sigma = self.diffusion.sigma[t_atom][:, None].expand_as(frac_coords)
        score = wrapped_normal_score(frac_coords - self.frac, sigma)
        return {"eps_lattice": eps, "score_frac": score * self.diffusion.lambda_t[t_atom].sqrt()[:, None]}


def circular_distance(a, b):
    d = a - b
    return (d - torch.round(d)).abs()


@pytest.mark.parametrize("steps", [None, 17])
def test_oracle_recovers_the_structure(batch, steps):
    diffusion = JointDiffusion(DiffusionConfig(timesteps=100))
    double = batch.clone()
    double.lattice = batch.lattice.double()
    oracle = Oracle(diffusion, batch.frac_coords, batch.lattice)
    frac, lattice = sample_structures(oracle, diffusion, double, timesteps=steps, lattice_snr=0.16,
                                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lattice, batch.lattice.double(), rtol=1e-9, atol=1e-9)
    assert circular_distance(frac, batch.frac_coords.double()).max().item() < 1e-6


@pytest.mark.parametrize("lattice_snr", [0.0, 0.1])
def test_oracle_chain_concentrates(three, lattice_snr):
    """Near the end of the chain (t = 20 of 200) the lattice sits at sqrt(alpha_bar) L_0 with the forward
    process's spread sqrt(1 - alpha_bar), and the coordinates around F_0 with spread sigma_t, within 12%
    (the spread of 16 copies of the batch: 432 numbers, whose std scatters by about 4%), whether or not
    the corrector also moves the lattice: both leave the marginals of the exact score in place (the lattice corrector at snr 0.1 widens the lattice's spread by a few
    per cent, its discretisation error; at 0.16 by 14%). The coordinates' corrector is switched off
    (``step_lr=0``): at this short chain's spacing it widens their spread by 14%."""
    batch = collate_crystals(three * 16)
    diffusion = JointDiffusion(DiffusionConfig(timesteps=200))
    oracle = Oracle(diffusion, batch.frac_coords, batch.lattice)
    seen = {}

    def spy(b, f, lat, t):
        seen.setdefault(int(t[0]), (f.clone(), lat.clone()))
        return oracle(b, f, lat, t)

    double = batch.clone()
    double.lattice = batch.lattice.double()
    sample_structures(spy, diffusion, double, corrector_steps=1, step_lr=0.0, lattice_snr=lattice_snr,
                      generator=torch.Generator().manual_seed(1))
    frac, lattice = seen[20]
    ab = diffusion.alpha_bar[20]
    err = (lattice - ab.sqrt() * batch.lattice.double()).std().item()
    assert err == pytest.approx((1 - ab).sqrt().item(), rel=0.12)
    d = frac - batch.frac_coords.double()
    spread = (d - torch.round(d)).pow(2).mean().sqrt().item()
    assert spread == pytest.approx(diffusion.sigma[20].item(), rel=0.12)


def test_quadratic_schedule_is_denser_near_the_end():
    linear, quadratic = time_schedule(1000, 50), time_schedule(1000, 50, "quadratic")
    assert linear[0] == quadratic[0] == 1000 and linear[-1] == quadratic[-1] == 1
    gaps = [a - b for a, b in zip(quadratic, quadratic[1:])]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < gaps[0] / 10
    assert max(a - b for a, b in zip(linear, linear[1:])) - min(a - b for a, b in zip(linear, linear[1:])) <= 1
    with pytest.raises(ValueError, match="schedule"):
        time_schedule(1000, 50, "cubic")


def test_shapes_range_and_determinism(batch):
    torch.manual_seed(0)
    model = CrysDiffDenoiser(DenoiserConfig(hidden_dim=16, num_layers=1, num_frequencies=4, time_dim=8))
    diffusion = JointDiffusion(DiffusionConfig(timesteps=50))
    runs = [
        sample_structures(model, diffusion, batch, timesteps=6, corrector_steps=2, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    frac, lattice = runs[0]
    assert frac.shape == (batch.num_nodes, 3) and lattice.shape == (batch.num_atoms.shape[0], 3, 3)
    assert bool(((frac >= 0) & (frac < 1)).all()) and torch.isfinite(lattice).all()
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert time_schedule(50, 6)[0] == 50 and time_schedule(50, 6)[-1] == 1 and len(time_schedule(50, 6)) == 6
    assert time_schedule(5) == [5, 4, 3, 2, 1]


def test_late_steps_take_their_own_corrector(batch):
    """``late_corrector_steps`` corrector steps (of size ``late_step_lr``) at the steps ``t <= late_below``
    only, one predictor call at every step."""
    diffusion = JointDiffusion(DiffusionConfig(timesteps=30))
    calls, lattice_in = [], batch.lattice.double()
    double = batch.clone()
    double.lattice = lattice_in
    oracle = Oracle(diffusion, batch.frac_coords, batch.lattice)

    def spy(b, f, lat, t):
        calls.append(int(t[0]))
        return oracle(b, f, lat, t)

    sample_structures(spy, diffusion, double, corrector_steps=1, late_below=4, late_corrector_steps=3,
                      generator=torch.Generator().manual_seed(0))
    assert [calls.count(t) for t in (30, 5, 4, 1)] == [2, 2, 4, 4] and len(calls) == 26 * 2 + 4 * 4
    plain = sample_structures(oracle, diffusion, double, generator=torch.Generator().manual_seed(0))
    same = sample_structures(oracle, diffusion, double, late_below=4, late_corrector_steps=1, late_step_lr=1e-5,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])


def test_branched_chains_equal_separate_runs(batch):
    """benchmarks/sample_validity_branch.py's shared chain gives exactly what one run per setting gives."""
    from benchmarks.sample_validity_branch import branched

    torch.manual_seed(0)
    model = CrysDiffDenoiser(DenoiserConfig(hidden_dim=16, num_layers=1, num_frequencies=4, time_dim=8))
    diffusion = JointDiffusion(DiffusionConfig(timesteps=20))
    base = dict(corrector_steps=1, step_lr=1e-5, lattice_snr=0.1, timesteps=20, schedule="linear", late_below=0)
    variants = [dict(late_below=10, late_corrector_steps=3), dict(late_below=4, late_step_lr=1e-4),
                dict(late_below=10, late_corrector_steps=0)]
    results = branched(model, diffusion, batch, base, variants, torch.Generator().manual_seed(5))
    for variant, (frac, lattice, _) in zip([{}] + variants, results):
        alone = sample_structures(model, diffusion, batch, **(base | variant), generator=torch.Generator().manual_seed(5))
        assert torch.equal(frac, alone[0]) and torch.equal(lattice, alone[1])
    assert not torch.equal(results[0][0], results[1][0])
