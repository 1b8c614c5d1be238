import numpy as np
import pytest

from crysdiff.cache import load_dataset
from crysdiff.splits import label_fraction, load_splits, random_split, save_splits, split_by_source


def test_random_split_is_disjoint_covering_and_seeded():
    a = random_split(1000, (0.8, 0.1, 0.1), seed=0)
    assert [len(p) for p in a] == [800, 100, 100]
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(1000))
    assert all(np.array_equal(x, y) for x, y in zip(a, random_split(1000, (0.8, 0.1, 0.1), seed=0)))
    assert not np.array_equal(a[1], random_split(1000, (0.8, 0.1, 0.1), seed=1)[1])
    with pytest.raises(ValueError, match="add up to 1"):
        random_split(10, (0.5, 0.4))


def test_label_fractions_are_nested():
    train = np.arange(100, 1100)
    subsets = [label_fraction(train, f, seed=7) for f in (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)]
    assert [len(s) for s in subsets] == [50, 100, 200, 400, 800, 1000]
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) <= set(large)
    assert not np.array_equal(label_fraction(train, 0.1, seed=8), subsets[1])
    assert len(label_fraction(np.arange(3), 0.01)) == 1


def test_split_files_shipped_with_a_dataset(shared_data, tmp_path):
    cache = load_dataset([shared_data / "carbon_24"], cache_dir=tmp_path, workers=2, progress=False)
    splits = split_by_source(cache)
    assert {k: len(v) for k, v in splits.items()} == {"test": 2030, "train": 6091, "val": 2032}
    save_splits(tmp_path / "s.json", splits, sources=cache.sources)
    again = load_splits(tmp_path / "s.json")
    assert all(np.array_equal(again[k], splits[k]) for k in splits)
