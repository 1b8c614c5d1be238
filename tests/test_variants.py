"""The ablation variants of paper Fig. 5 as config fields of the one implementation:
the non-equivariant encoder (``model.kind=cartesian``), one-field pre-training averaged at
fine-tuning (``diffusion.mode`` + ``extra_init``) and unfixed structures (``fix_structure=false``)."""

from __future__ import annotations

import pytest
import torch
from conftest import HeadWithoutCoefficients

from crysdiff.batching import collate_crystals
from crysdiff.card import PropertyDiffusion, PropertyDiffusionConfig
from crysdiff.cartesian import CartesianEncoder
from crysdiff.config import from_dict
from crysdiff.denoiser import CrysDiffDenoiser, CrysDiffEncoder, DenoiserConfig, build_encoder
from crysdiff.diffusion import DiffusionConfig, JointDiffusion
from crysdiff.finetune import FinetuneConfig, build_property_model
from crysdiff.heads import HeadConfig
from crysdiff.property_model import AveragedEncoder, NoisedStructures, PropertyModel, structure_blocks, structure_timestep
from crysdiff.sampling import sample_structures
from crysdiff.symmetry import assert_invariant, random_orthogonal, rotate_lattice, shift_all, shift_one_atom_by_lattice_vector

SMALL = dict(hidden_dim=32, num_layers=2, num_frequencies=8, time_dim=16)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread avoids paying for thread hand-offs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch(crystals):
    return collate_crystals(crystals)


@pytest.fixture(scope="module")
def batch64(batch):
    out = batch.clone()
    out.frac_coords, out.lattice = out.frac_coords.double(), out.lattice.double()
    return out


# --- 1. without the equivariant encoder ----------------------------------------------------------


def test_config_defaults_keep_old_checkpoints_loading():
    assert from_dict(DenoiserConfig, {"hidden_dim": 16}).kind == "equivariant"
    assert from_dict(DiffusionConfig, {"timesteps": 20}).mode == "joint"
    old = from_dict(FinetuneConfig, {"target": "band_gap"})
    assert old.fix_structure and old.extra_init == ""
    assert isinstance(build_encoder(DenoiserConfig(**SMALL)), CrysDiffEncoder)
    with pytest.raises(ValueError, match="cartesian"):
        DenoiserConfig(kind="euclidean")
    with pytest.raises(ValueError, match="coords"):
        DiffusionConfig(mode="both")


def test_cartesian_denoiser_trains(batch):
    torch.manual_seed(0)
    model = CrysDiffDenoiser(DenoiserConfig(kind="cartesian", **SMALL))
    assert isinstance(model.encoder, CartesianEncoder)
    out = JointDiffusion(DiffusionConfig(timesteps=20)).loss(model, batch, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert min(g.abs().sum().item() for g in grads) > 0


def test_only_the_equivariant_encoder_is_rotation_invariant(batch64):
    torch.manual_seed(0)
    t = torch.randint(1, 21, (batch64.num_atoms.shape[0],), generator=torch.Generator().manual_seed(1))
    q = random_orthogonal(5)
    equivariant = CrysDiffEncoder(DenoiserConfig(**SMALL)).double().eval()
    cartesian = CartesianEncoder(DenoiserConfig(kind="cartesian", **SMALL)).double().eval()

    def run(encoder):
        return lambda b: encoder(b, b.frac_coords, b.lattice, t)

    assert_invariant(run(equivariant), batch64, lambda b: rotate_lattice(b, q), atol=1e-9)
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(run(cartesian), batch64, lambda b: rotate_lattice(b, q), atol=1e-3)

    def relative_change(encoder):
        before, after = run(encoder)(batch64), run(encoder)(rotate_lattice(batch64, q))
        return ((after - before).norm() / before.norm()).item()

    assert relative_change(cartesian) > 1e-2 and relative_change(equivariant) < 1e-10  # measurably, not round-off
    # it still sees the crystal as periodic: the ablation removes rotation invariance only
    assert_invariant(run(cartesian), batch64, lambda b: shift_one_atom_by_lattice_vector(b, 2, (1, -1, 0)), atol=1e-9)
    assert_invariant(run(cartesian), batch64, lambda b: shift_all(b, [0.3, 0.6, 0.9]), atol=1e-9)


# --- 2. without joint diffusion --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lattice", "coords"])
def test_one_field_pretraining(batch, mode):
    diffusion = JointDiffusion(DiffusionConfig(timesteps=20, mode=mode))
    seen = {}

    def zero_model(b, frac, lattice, t):
        seen.update(frac=frac, lattice=lattice)
        return {"eps_lattice": torch.zeros_like(lattice), "score_frac": torch.zeros_like(frac)}

    out = diffusion.loss(zero_model, batch, generator=torch.Generator().manual_seed(0))
    term = f"loss_{mode}"
    assert set(out) == {"loss", term} and out["loss"] == out[term]
    clean, noised = ("frac", "lattice") if mode == "lattice" else ("lattice", "frac")
    assert torch.equal(seen[clean], getattr(batch, "frac_coords" if clean == "frac" else "lattice"))
    assert not torch.allclose(seen[noised], getattr(batch, "frac_coords" if noised == "frac" else "lattice"))
    # a real denoiser: only the head of the diffused field gets a gradient
    model = CrysDiffDenoiser(DenoiserConfig(hidden_dim=16, num_layers=1, num_frequencies=4, time_dim=8))
    diffusion.loss(model, batch)["loss"].backward()
    trained, idle = (model.lattice_head, model.score_head) if mode == "lattice" else (model.score_head, model.lattice_head)
    assert all(p.grad is not None for p in trained.parameters()) and all(p.grad is None for p in idle.parameters())
    with pytest.raises(ValueError, match=f"diffusion.mode={mode}"):
        sample_structures(model, diffusion, batch)


def test_averaged_encoder_is_the_mean_of_both(batch):
    config = DenoiserConfig(hidden_dim=16, num_layers=1, num_frequencies=4, time_dim=8)
    torch.manual_seed(0)
    model = build_property_model(FinetuneConfig(model=config, extra_init="b.ckpt", head=HeadConfig(kind="card", prior="mean", hidden_dim=16)))
    first, second = model.encoder.encoders
    t = torch.zeros(batch.num_atoms.shape[0], dtype=torch.long)
    args = (batch, batch.frac_coords, batch.lattice, t)
    torch.testing.assert_close(model.encoder(*args), (first(*args) + second(*args)) / 2)
    keys = model.state_dict().keys()
    assert any(k.startswith("encoder.encoders.0.") for k in keys) and any(k.startswith("encoder.encoders.1.") for k in keys)
    with torch.no_grad():
        model.head.out.weight.normal_()  # the zero-initialised head would pass no gradient to the encoders
    model.loss(batch, torch.randn(batch.num_atoms.shape[0]), PropertyDiffusion(PropertyDiffusionConfig(timesteps=10)))["loss"].backward()
    for encoder in (first, second):
        assert sum(p.grad.abs().sum().item() for p in encoder.parameters() if p.grad is not None) > 0


# --- 3. without fixing structures ------------------------------------------------------------------


def test_structure_time_mapping_and_blocks():
    assert structure_timestep(torch.arange(1, 11), 10, 1000).tolist() == list(range(100, 1001, 100))
    mapped = structure_timestep(torch.arange(1, 1001), 1000, 20)
    assert mapped.min() == 1 and mapped.max() == 20 and bool((mapped.diff() >= 0).all())
    assert torch.equal(structure_timestep(torch.arange(1, 51), 50, 50), torch.arange(1, 51))
    blocks = structure_blocks(10, 3)
    assert blocks[0][0] == 1 and blocks[-1][1] == 10 and all(a[1] + 1 == b[0] for a, b in zip(blocks, blocks[1:]))
    assert len(structure_blocks(5, 20)) == 5


class RecordingEncoder(torch.nn.Module):
    """Atom states depending on Z, the time step and the coordinates; records what it was shown."""

    def __init__(self, hidden=16):
        super().__init__()
        self.embed = torch.nn.Embedding(100, hidden)
        self.mix = torch.nn.Linear(4, hidden)
        self.calls = []

    def forward(self, batch, frac_coords, lattice, t):
        self.calls.append((frac_coords, lattice, t))
        extra = torch.cat([frac_coords, t[batch.batch, None].float() / 20], dim=-1)
        return self.embed(batch.atomic_numbers) + self.mix(extra)  # [N, H]


def test_unfixed_structure_training_and_prediction(batch):
    property_diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=10))
    structure_diffusion = JointDiffusion(DiffusionConfig(timesteps=20))
    encoder = RecordingEncoder()
    head = HeadConfig(kind="card", prior="mean", hidden_dim=16)
    model = PropertyModel(encoder, 16, head, structures=NoisedStructures(structure_diffusion, encodings=4))
    y = torch.randn(batch.num_atoms.shape[0], dtype=torch.float64)
    out = model.loss(batch, y, property_diffusion, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    frac, lattice, t = encoder.calls[-1]
    t_y = property_diffusion.sample_timesteps(len(y), generator=torch.Generator().manual_seed(0))  # the same draw
    assert torch.equal(t, structure_timestep(t_y, 10, 20))
    assert not torch.allclose(frac, batch.frac_coords) and not torch.allclose(lattice, batch.lattice)
    PropertyModel(encoder, 16, head).loss(batch, y, property_diffusion)  # the default: the clean structure at step 0
    frac, lattice, t = encoder.calls[-1]
    assert torch.equal(frac, batch.frac_coords) and torch.equal(t, torch.zeros_like(t))
    encoder.calls.clear()
    pred = model.predict(batch, property_diffusion, num_samples=5)
    assert len(encoder.calls) == 4 and len({int(c[2][0]) for c in encoder.calls}) == 4
    assert torch.isfinite(pred["mean"]).all()
    for head in (HeadConfig(kind="regression", prior="mean", hidden_dim=16), HeadConfig(prior="learned", hidden_dim=16)):
        with pytest.raises(ValueError, match="fix_structure=false"):
            PropertyModel(RecordingEncoder(), 16, head, structures=NoisedStructures(structure_diffusion))


def test_unfixed_structure_affine_chain_matches_generic_chain(batch):
    """The per-block coefficient tables give the same chain as calling the head on each step's encoding."""
    torch.manual_seed(0)
    property_diffusion = PropertyDiffusion(PropertyDiffusionConfig(timesteps=20))
    structure_diffusion = JointDiffusion(DiffusionConfig(timesteps=20))
    model = PropertyModel(RecordingEncoder(), 16, HeadConfig(kind="card", prior="mean", hidden_dim=16),
                          structures=NoisedStructures(structure_diffusion, encodings=3))
    with torch.no_grad():
        model.head.out.weight.normal_(std=0.3)  # coefficients that depend on the (per-block) encoding
    kwargs = dict(num_samples=4000)
    fast = model.predict(batch, property_diffusion, generator=torch.Generator().manual_seed(0), **kwargs)
    model.head = HeadWithoutCoefficients(model.head)
    slow = model.predict(batch, property_diffusion, generator=torch.Generator().manual_seed(0), **kwargs)
    torch.testing.assert_close(fast["mean"], slow["mean"], atol=0.06, rtol=0)
    torch.testing.assert_close(fast["std"], slow["std"], rtol=0.1, atol=0)


# --- the three variants through the CLI ------------------------------------------------------------

TINY = ["model.hidden_dim=16", "model.num_layers=1", "model.num_frequencies=4", "model.time_dim=8", "model.kind=cartesian"]
QUICK = ["--no-progress", "--workers", "1", "train.max_steps=2", "train.batch_size=8", "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def small_data(perov_16_6):
    return perov_16_6


def test_cli_one_field_cartesian_models_finetuned_on_unfixed_structures(small_data, tmp_path, capsys):
    """pretrain (lattice only) + pretrain (coords only), both non-equivariant -> finetune averaging
    both encoders with unfixed structures -> a self-contained checkpoint that predicts and refines."""
    import crysdiff
    from crysdiff.checkpoint import load_checkpoint
    from crysdiff.cli import main
    from crysdiff.finetune import _initial_model

    data = ["--data", str(small_data / "train.csv"), "--val", str(small_data / "val.csv")]
    for mode in ("lattice", "coords"):
        assert main(["pretrain", *data, "--out", str(tmp_path / mode), *TINY, f"diffusion.mode={mode}",
                     "diffusion.timesteps=20", *QUICK]) == 0
    a, b = tmp_path / "lattice" / "model.ckpt", tmp_path / "coords" / "model.ckpt"
    assert load_checkpoint(a)["config"]["model"]["kind"] == "cartesian"
    assert main(["sample", "--model", str(a), "--composition", "NaCl", "--out", str(tmp_path / "s"), "--device", "cpu"]) == 2
    assert "diffusion.mode=lattice" in capsys.readouterr().err

    # the encoders start from A and B
    config, model, info = _initial_model(FinetuneConfig(target="heat_ref", extra_init=str(b)), str(a), 0.0, 1.0)
    assert info["extra_init"] == str(b) and config.model.kind == "cartesian" and config.structure_diffusion.timesteps == 20
    for encoder, path in zip(model.encoder.encoders, (a, b)):
        stored = load_checkpoint(path)["state_dict"]
        assert all(torch.equal(v, stored[f"encoder.{k}"]) for k, v in encoder.state_dict().items())

    out = tmp_path / "ft"
    # the default head's learned prior would need the clean structure: the CLI says so before training
    assert main(["finetune", "--init", str(a), "extra_init=" + str(b), "fix_structure=false", *data, "--target", "heat_ref",
                 "--out", str(tmp_path / "refused"), *QUICK]) == 2
    assert "fix_structure=false needs a diffusion head with prior=mean" in capsys.readouterr().err
    assert main(["finetune", "--init", str(a), "extra_init=" + str(b), "fix_structure=false", "structure_encodings=3",
                 "head.prior=mean",
                 *data, "--target", "heat_ref", "--out", str(out), "property.timesteps=10", "eval_samples=3", *QUICK]) == 0
    payload = load_checkpoint(out / "model.ckpt", kind="finetune")
    assert payload["config"]["extra_init"] == str(b) and payload["config"]["fix_structure"] is False
    assert {k.split(".")[2] for k in payload["state_dict"] if k.startswith("encoder.")} == {"0", "1"}

    a.unlink(), b.unlink()  # the fine-tuned model needs neither pre-trained file any more
    predictor = crysdiff.load(out / "model.ckpt", device="cpu")
    structures = predictor.model.structures
    assert isinstance(structures, NoisedStructures) and structures.diffusion.timesteps == 20 and structures.encodings == 3
    from pymatgen.core import Lattice, Structure

    frame = predictor.predict([Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])], samples=5)
    assert len(frame) == 1 and frame["mean"].notna().all()
    # refining keeps both encoders and the structure handling
    config, refined, info = _initial_model(FinetuneConfig(target="heat_ref"), str(out / "model.ckpt"), 0.0, 1.0)
    assert info["init_kind"] == "finetune" and config.extra_init == str(b) and not config.fix_structure
    assert isinstance(refined.encoder, AveragedEncoder)
