"""Predictions with uncertainty from a fine-tuned model: ``crysdiff.load(...).predict([...])``.

``load`` takes a checkpoint path or the name of a bundled model (a target name such as
``formation_energy_per_atom``; see :func:`bundled_models`). ``predict`` takes paths (anything the
readers understand), ``pymatgen`` Structures, ``ase`` Atoms or :class:`~crysdiff.crystal.Crystal`
objects, and returns one row per structure: ``id``, ``source``, ``mean``, ``std``, ``p2.5``,
``p97.5``, ``unit``, ``flags`` (empty, or why the row is unlike the model's training crystals:
see :mod:`crysdiff.domain`); a model trained on canonical cells (``data.cell``, see :mod:`crysdiff.cells`)
reduces every structure the same way and adds ``n_atoms`` (atoms in the cell given), ``n_atoms_model``
(atoms in the cell the model used) and ``cell`` (``canonical``, or ``given`` where the reduction fell
back to the structure's own cell, also flagged ``cell_fallback``). Each crystal is encoded once; the ``S`` samples of the reverse chain then run
through the head only (Alg. 3). A model fine-tuned with ``fix_structure=false`` encodes each crystal
``structure_encodings`` times instead (see :mod:`crysdiff.property_model`).

``load`` also takes several checkpoints of the same target (for example the same fine-tuning run
with ``--seed 0 1 2``): an *ensemble*. Each member draws ``S`` samples and the summary is taken over
all of them, so the spread holds both what one model expects y to scatter by (the CARD distribution)
and how much the members disagree; the second part alone is the ``std_models`` column. One model's
interval has no term for the second part, and is too narrow when it was trained for many epochs
on few labels (see docs/method.md, "What the interval is, and when not to trust it").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from crysdiff.card import PropertyDiffusion
from crysdiff.checkpoint import CheckpointError, load_checkpoint
from crysdiff.bundled import bundled_models, resolve_model
from crysdiff.property_model import PropertyModel
from crysdiff.restore import FinetuneConfig, restore
from crysdiff.uncertainty import ensemble_summary, pool_members

__all__ = ["Predictor", "Member", "load", "bundled_models", "pool_members"]

_CELL_COLUMNS = ("n_atoms", "n_atoms_model", "cell")


def _cell_values(given_atoms, model_atoms, fallback) -> dict:
    """A row's cell columns: atoms in the cell given and in the cell the model used, and which cell that was."""
    return {"n_atoms": int(given_atoms), "n_atoms_model": int(model_atoms), "cell": "given" if fallback else "canonical"}


@dataclass
class Member:
    """One fine-tuned model of a :class:`Predictor` (several make an ensemble)."""

    model: PropertyModel
    diffusion: PropertyDiffusion
    config: FinetuneConfig
    path: str = ""

    def sample(self, batch, samples: int, generator: torch.Generator, calibrated: bool = True) -> dict[str, torch.Tensor]:
        return self.model.predict(batch, self.diffusion, num_samples=samples, generator=generator, keep_samples=True,
                                  interval_scale=None if calibrated else 1.0)


@dataclass
class Predictor:
    """One fine-tuned model, or an ensemble of several for the same target, ready to predict (see :func:`load`).
    ``model``, ``diffusion`` and ``config`` are those of the first member."""

    members: list[Member]
    target: str
    unit: str
    device: torch.device
    info: dict = field(default_factory=dict)
    widen: bool = True  # ensembles: the small-ensemble correction of :func:`pool_members`
    calibrated: bool = True  # apply each model's interval_scale (fitted on its validation set)

    @property
    def model(self) -> PropertyModel:
        return self.members[0].model

    @property
    def diffusion(self) -> PropertyDiffusion:
        return self.members[0].diffusion

    @property
    def config(self) -> FinetuneConfig:
        return self.members[0].config

    @property
    def lower_bound(self) -> float | None:
        """The bound below which no member predicts (``None`` if one member has none)."""
        bounds = [member.model.lower_bound for member in self.members]
        return None if any(b is None for b in bounds) else max(bounds)

    @property
    def columns(self) -> list[str]:
        extra = ["std_models"] if len(self.members) > 1 else []
        cells = list(_CELL_COLUMNS) if self.cell.canonical else []  # models of cells as given: columns as before
        return ["id", "source", "mean", "std", "p2.5", "p97.5", *extra, "unit", *cells, "flags"]

    @property
    def cell(self):
        """Which cell of each structure the model sees (:class:`~crysdiff.cells.CellConfig`)."""
        return self.config.data.cell

    def sample(self, batch, samples: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Summary of ``samples`` draws per member for a collated batch already on the device: ``mean``,
        ``std``, ``p2.5``, ``p97.5`` and ``samples`` ``[B, S * members]``; for an ensemble also
        ``std_models``, the spread of the members' means."""
        if len(self.members) == 1:
            return self.members[0].sample(batch, samples, generator, self.calibrated)
        outs = [member.sample(batch, samples, generator, self.calibrated) for member in self.members]
        return ensemble_summary(outs, widen=self.widen, lower_bound=self.lower_bound)

    @property
    def validation_settings(self):
        """The structure checks the model was trained with (minimum distance, maximum atoms)."""
        from crysdiff.crystal import ValidationSettings

        return ValidationSettings(min_distance=self.config.data.min_distance, max_atoms=self.config.data.max_atoms)

    @property
    def edge_settings(self):
        """How the model's graphs are built (dense up to ``max_dense_atoms``, else k nearest neighbours)."""
        from crysdiff.batching import EdgeSettings

        return EdgeSettings(max_dense_atoms=self.config.data.max_dense_atoms, knn_neighbors=self.config.data.knn_neighbors)

    def _objects(self, objects: list, strict: bool) -> tuple[list, list]:
        """The in-memory structures as :class:`~crysdiff.cells.Reduced` crystals, and the bad ones."""
        from crysdiff.cells import canonical_cells
        from crysdiff.crystal import Crystal, RecordError, validate
        from crysdiff.io import from_structures

        crystals, errors = [], []
        for position, obj in enumerate(objects):
            try:
                if isinstance(obj, Crystal):
                    crystals.append(validate(obj, self.validation_settings))
                else:
                    crystals.extend(from_structures([obj], ids=[f"input {position}"], settings=self.validation_settings))
            except RecordError as error:
                if strict:
                    raise
                errors.append(error)
        return canonical_cells(crystals, self.cell), errors

    def _batches(self, inputs: list, batch_size: int, strict: bool, progress: bool):
        """``(batch, ids, sources, cells)`` for the inputs (``cells``: the rows' :data:`_CELL_COLUMNS` values), and the records that could not be read. Paths go
        through the dataset cache (parallel parsing, memory-mapped, reused on the next call);
        in-memory structures are collated directly."""
        from crysdiff.batching import collate_crystals
        from crysdiff.cache import DatasetError, load_dataset
        from crysdiff.crystal import RecordError
        from crysdiff.loader import make_loader

        edges = self.edge_settings
        paths = [item for item in inputs if isinstance(item, (str, Path))]
        objects = [item for item in inputs if not isinstance(item, (str, Path))]
        errors: list = []
        jobs = []
        if paths:
            try:
                cache = load_dataset(paths, settings=self.validation_settings, strict=strict, progress=progress,
                                     cell=self.cell)
            except DatasetError:
                if not objects:
                    raise
                cache = None
            if cache is not None:
                errors += [RecordError(e["source"], e["record"], e["reason"]) for e in cache.skipped]
                for batch in make_loader(cache, batch_size=batch_size, edges=edges):
                    index = batch.index.tolist()
                    cells = [_cell_values(cache.given_atoms[i], cache.num_atoms[i], cache.cell_fallback[i]) for i in index]
                    jobs.append((batch, [cache.id(i) for i in index], [cache.source_of(i) for i in index], cells))
        crystals, bad = self._objects(objects, strict)
        errors += bad
        for start in range(0, len(crystals), batch_size):
            part = crystals[start:start + batch_size]
            jobs.append((collate_crystals([r.crystal for r in part], edges=edges), [r.crystal.id for r in part],
                         [r.crystal.source for r in part],
                         [_cell_values(r.given_atoms, r.crystal.num_atoms, bool(r.fallback)) for r in part]))
        return jobs, errors

    @torch.no_grad()
    def predict(self, inputs: Iterable[Any] | Any, *, samples: int = 100, batch_size: int = 64, seed: int = 0,
                strict: bool = False, progress: bool = False, return_errors: bool = False):
        """A ``pandas.DataFrame`` with one row per readable structure: the structures read from paths
        first (in dataset order), then the in-memory ones. Bad records are skipped and, with
        ``return_errors``, returned as a second value (a list of ``RecordError``)."""
        import pandas as pd

        from crysdiff.domain import batch_flags, flags_note, predictor_summary

        summary = predictor_summary(self.info)
        if isinstance(inputs, (str, Path)) or not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        jobs, errors = self._batches(list(inputs), batch_size, strict, progress)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        rows = []
        if progress and len(jobs) > 1:
            from rich.progress import track

            jobs = track(jobs, description="predicting", transient=True)
        for batch, ids, sources, cells in jobs:
            out = self.sample(batch.to(self.device), samples, generator)
            numbers = [name for name in self.columns if name in out]
            notes = [["cell_fallback"] if row.get("cell") == "given" else [] for row in cells]
            for k, (identifier, source, flags) in enumerate(zip(ids, sources, batch_flags(batch, summary, notes))):
                rows.append({"id": identifier, "source": source, **{name: float(out[name][k]) for name in numbers},
                             "unit": self.unit, **cells[k], "flags": flags})
        frame = pd.DataFrame(rows, columns=self.columns)
        frame.attrs["flags_note"] = flags_note(summary)
        return (frame, errors) if return_errors else frame


def load(model: str | Path | list | tuple, device: str | torch.device | None = None) -> Predictor:
    """A :class:`Predictor` from a fine-tuned checkpoint path or a bundled model name, or an ensemble
    from a list of them (same target, unit and structure settings; diffusion heads only)."""
    names = list(model) if isinstance(model, (list, tuple)) else [model]
    if not names:
        raise CheckpointError("no model given")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    members, normalizers, infos = [], [], []
    for name in names:
        path = resolve_model(name)
        payload = load_checkpoint(path, kind="finetune")
        try:
            config, network = restore(payload)
        except ValueError as error:
            raise CheckpointError(f"{path}: {error}") from None
        normalizer = payload["normalizer"]
        members.append(Member(model=network.to(device).eval(), diffusion=PropertyDiffusion(config.property),
                              config=config, path=str(path)))
        normalizers.append(normalizer)
        infos.append({"path": str(path), "metrics": payload.get("metrics", {}), "data": payload.get("data", {}),
                      "calibrated": "interval_scale" in normalizer})
    if len(members) > 1:
        _check_ensemble(members, normalizers)
    info = infos[0] if len(infos) == 1 else {"members": infos}
    return Predictor(members=members, target=normalizers[0]["target"], unit=normalizers[0].get("unit", ""),
                     device=device, info=info)


def _check_ensemble(members: list[Member], normalizers: list[dict]) -> None:
    """Members must predict the same quantity from identically built graphs, with sampled intervals."""
    first, reference = members[0], normalizers[0]
    structure = ("min_distance", "max_atoms", "max_dense_atoms", "knn_neighbors", "cell")
    for member, normalizer in zip(members, normalizers):
        if not member.model.is_diffusion:
            raise CheckpointError(f"{member.path}: an ensemble needs diffusion heads, and this model has a "
                                  f"{member.config.head.kind!r} head (no sampled interval to pool)")
        for key in ("target", "unit"):
            if normalizer.get(key) != reference.get(key):
                raise CheckpointError(f"{member.path}: {key} {normalizer.get(key)!r} differs from {reference.get(key)!r} "
                                      f"of {first.path}; an ensemble's members must predict the same quantity")
        for key in structure:
            if getattr(member.config.data, key) != getattr(first.config.data, key):
                raise CheckpointError(f"{member.path}: data.{key}={getattr(member.config.data, key)} differs from "
                                      f"{getattr(first.config.data, key)} of {first.path}; ensemble members must read "
                                      f"structures the same way")
