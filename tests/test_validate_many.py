"""Validation of a whole task at once (crysdiff.crystal.validated_many) gives what one-at-a-time
validation gives, to the bit, and never certifies a crystal that validation rejects."""

from __future__ import annotations

import numpy as np
import pytest

from crysdiff.crystal import Crystal, RecordError, ValidationSettings, validate, validated_many
from crysdiff.io import read


def _one(crystal, settings):
    try:
        return validate(crystal, settings)
    except RecordError:
        return None


def _same(a: Crystal, b: Crystal) -> bool:
    return (a.atomic_numbers.dtype == b.atomic_numbers.dtype and a.atomic_numbers.tobytes() == b.atomic_numbers.tobytes()
            and a.frac_coords.tobytes() == b.frac_coords.tobytes() and a.lattice.tobytes() == b.lattice.tobytes()
            and (a.id, a.labels, a.source, a.record) == (b.id, b.labels, b.source, b.record))


def test_real_structures_bit_for_bit(shared_data):
    crystals = read(shared_data / "matminer" / "flla_2015.extxyz")[0][:1500]
    crystals += read(shared_data / "prototypes" / "cod_spg229_jarvis.json")[0]
    unwrapped = [Crystal(c.atomic_numbers.copy(), c.frac_coords + np.arange(len(c.frac_coords))[:, None] % 3 - 1,
                         c.lattice, c.id, c.labels, c.source, c.record) for c in crystals[:200]]  # coordinates outside [0, 1)
    settings = ValidationSettings()
    out = validated_many(crystals + unwrapped, settings)
    certified = [(c, v) for c, v in zip(crystals + unwrapped, out) if v is not None]
    assert len(certified) > 0.9 * len(out)  # most are certified together; the rest only cost time
    assert all(_same(v, validate(c, settings)) for c, v in certified)


@pytest.mark.parametrize("seed", range(4))
def test_never_certifies_what_validation_rejects(seed):
    """Two atoms at distances around the limit, in skewed and plain cells, through an image or not;
    also bad atomic numbers, NaN coordinates, a degenerate lattice, short lattice vectors."""
    rng = np.random.default_rng(seed)
    settings = ValidationSettings()
    crystals = []
    for k in range(400):
        n = int(rng.integers(1, 12))
        lattice = np.diag(rng.uniform(4.0, 9.0, 3)) + rng.uniform(-3.0, 3.0, (3, 3)) * (k % 2)
        if k % 31 == 0:
            lattice[0] *= 0.5 / np.linalg.norm(lattice[0]) * (1 + rng.choice([-1e-9, 0.0, 1e-9]))
        frac = rng.uniform(0, 1, (n, 3))
        if n > 1:  # atom 1 placed next to atom 0 (perhaps through an image), near the minimum distance
            direction = rng.normal(size=3)
            distance = settings.min_distance * (1 + rng.choice([-1e-3, -1e-9, 0.0, 1e-12, 1e-9, 1e-3, 0.5]))
            frac[1] = frac[0] + (direction / np.linalg.norm(direction) * distance) @ np.linalg.inv(lattice)
        z = rng.integers(1, 90, n)
        if k % 17 == 0:
            z[0] = 0 if k % 2 else 119
        if k % 23 == 0:
            frac[-1, 1] = np.nan
        if k % 29 == 0:
            lattice[2] = lattice[0] + lattice[1]
        crystals.append(Crystal(z, frac, lattice, id=str(k)))
    out = validated_many(crystals, settings)
    expected = [_one(c, settings) for c in crystals]
    assert sum(e is None for e in expected) > 50 and sum(v is not None for v in out) > 50
    for crystal, fast, slow in zip(crystals, out, expected):
        if fast is not None:
            assert slow is not None and _same(fast, slow), crystal.id
