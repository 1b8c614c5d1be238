"""Batches from the cache: correctness against the slow path, order, resume, sharding, size caps."""

import numpy as np
import pytest
import torch

from crysdiff.batching import EdgeSettings, collate_crystals
from crysdiff.cache import load_dataset
from crysdiff.loader import CrystalBatchSampler, make_loader


@pytest.fixture(scope="module")
def perov(shared_data, tmp_path_factory):
    return load_dataset([shared_data / "perov_5" / "val.csv.gz", shared_data / "perov_5" / "test.csv.gz"],
                        cache_dir=tmp_path_factory.mktemp("cache"), workers=1, progress=False)


def test_batches_match_collate_of_crystals(perov):
    indices = np.array([5, 100, 3, 4000, 7000])
    (batch,) = list(make_loader(perov, indices, batch_size=8, targets=["heat_ref", "dir_gap"]))
    slow = collate_crystals([perov.crystal(i) for i in indices], label_names=["heat_ref", "dir_gap"])
    for key in ("atomic_numbers", "frac_coords", "lattice", "num_atoms", "batch", "ptr", "edge_index", "y"):
        assert torch.equal(getattr(batch, key), getattr(slow, key)), key
    assert batch.index.tolist() == indices.tolist()


def test_shuffle_is_seeded_and_covers_everything(perov):
    a = [b.index.tolist() for b in make_loader(perov, batch_size=500, shuffle=True, seed=3)]
    b = [b.index.tolist() for b in make_loader(perov, batch_size=500, shuffle=True, seed=3)]
    c = [b.index.tolist() for b in make_loader(perov, batch_size=500, shuffle=True, seed=4)]
    assert a == b and a != c
    assert sorted(sum(a, [])) == list(range(len(perov)))


def test_epochs_differ_and_resume_continues_exactly(perov):
    sampler = CrystalBatchSampler(np.arange(len(perov)), perov.num_atoms, batch_size=100, shuffle=True, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) != full
    sampler.set_epoch(2)
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(7)]
    state = sampler.state_dict()
    fresh = CrystalBatchSampler(np.arange(len(perov)), perov.num_atoms, batch_size=100, shuffle=True, seed=1)
    fresh.load_state_dict(state)
    assert seen + list(fresh) == full


def test_ranks_are_disjoint_and_cover(perov):
    shards = [sum((b for b in CrystalBatchSampler(np.arange(1001), perov.num_atoms, batch_size=64, shuffle=True, seed=0,
                                                  rank=r, world_size=3)), []) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of crystals per rank
    assert set(shards[0]) | set(shards[1]) | set(shards[2]) == set(range(1001))
    assert sum(len(s) for s in shards) == 1002  # one crystal repeated to pad 1001 to 3 x 334


def test_max_atoms_per_batch(shared_data, tmp_path):
    cache = load_dataset([shared_data / "prototypes" / "cod_spg229_jarvis.json"], cache_dir=tmp_path, workers=1, progress=False)
    for batch in make_loader(cache, batch_size=32, max_atoms_per_batch=2000):
        assert batch.num_atoms.shape[0] == 1 or int(batch.num_atoms.sum()) <= 2000


def test_largest_cod_cell_batches_with_linear_edges(shared_data, tmp_path):
    cache = load_dataset([shared_data / "prototypes" / "cod_spg229_jarvis.json"], cache_dir=tmp_path, workers=1, progress=False)
    big = int(np.argmax(cache.num_atoms))
    assert cache.num_atoms[big] == 4640
    (batch,) = list(make_loader(cache, [big], batch_size=1, edges=EdgeSettings(max_dense_atoms=200, knn_neighbors=24)))
    assert batch.edge_index.shape[1] <= 4640 * 25  # kNN + self-pair, not 4640² = 21.5 M
    assert torch.equal(torch.bincount(batch.edge_index[1], minlength=4640), torch.full((4640,), 25))


def test_missing_targets_are_dropped_and_counted(shared_data, tmp_path):
    cache = load_dataset([shared_data / "perov_5" / "train.csv.gz", shared_data / "perov_5" / "val.csv.gz"],
                         cache_dir=tmp_path, workers=2, progress=False)
    loader = make_loader(cache, batch_size=1000, targets=["heat_ref"])
    assert loader.dropped == 11356  # the CDVAE train split carries no labels
    total = 0
    for batch in loader:
        assert torch.isfinite(batch.y).all()
        total += batch.y.shape[0]
    assert total == 3787
    keep_all = make_loader(cache, batch_size=5000, targets=["heat_ref"], drop_missing=False)
    assert keep_all.dropped == 0 and sum(b.y.shape[0] for b in keep_all) == len(cache)


def test_unknown_target_is_a_clear_error(perov):
    with pytest.raises(ValueError, match="unknown target 'nonsense'.*heat_ref"):
        make_loader(perov, targets=["nonsense"])


def test_worker_processes(perov):
    loader = make_loader(perov, np.arange(300), batch_size=50, num_workers=2)
    assert sum(b.num_atoms.shape[0] for b in loader) == 300


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_is_exact_while_workers_prefetch(perov, num_workers):
    def make():
        return make_loader(perov, np.arange(2000), batch_size=100, shuffle=True, seed=5, num_workers=num_workers)

    loader = make()
    loader.batch_sampler.set_epoch(1)
    full = [b.index.tolist() for b in loader]
    loader.batch_sampler.set_epoch(1)
    iterator = iter(loader)
    seen = [next(iterator).index.tolist() for _ in range(4)]
    state = loader.batch_sampler.state_dict()
    assert state == {"epoch": 1, "batches_served": 4, "seed": 5}
    del iterator
    resumed = make()
    resumed.batch_sampler.load_state_dict(state)
    assert seen + [b.index.tolist() for b in resumed] == full
    assert len(resumed) == 20


def test_loader_ranks_shard_the_epoch(perov):
    shards = [sum((b.index.tolist() for b in make_loader(perov, np.arange(500), batch_size=64, shuffle=True, seed=2,
                                                          rank=r, world_size=2)), []) for r in range(2)]
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(500))


def test_lightning_sets_each_epoch_of_the_shuffle(perov):
    """Lightning passes the epoch to ``loader.batch_sampler.sampler``: a training run draws a new
    order every epoch (the sampler used to stay at epoch 0, repeating the first epoch's order)."""
    import lightning as L
    import torch

    class Record(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.orders = {}

        def training_step(self, batch, batch_idx):
            self.orders.setdefault(self.current_epoch, []).extend(batch.index.tolist())
            return self.weight * 0.0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Record()
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, accelerator="cpu")
    trainer.fit(module, make_loader(perov, np.arange(40), batch_size=8, shuffle=True, seed=2))
    orders = [module.orders[e] for e in range(3)]
    assert all(sorted(order) == list(range(40)) for order in orders)
    assert orders[0] != orders[1] != orders[2] != orders[0]
