"""Split files for the reproduction suite (``benchmarks/suite.py``): each task's train / val / test
membership written once, deterministically, as plain dataset files that ``crysdiff finetune
--data/--val`` and ``crysdiff predict`` read, and that peer models (ALIGNN, CGCNN) get unchanged.

Why files and not index lists: the crysdiff CLI takes data sources, so a subset *is* a file. Each
subset keeps its source's format and text (CSV rows, extended-XYZ frames) except the ``mp_elastic``
folder, whose CIF texts go into a CDVAE-style CSV with a ``cif`` column, verbatim. Membership is
decided on record positions in the source (row, frame, line of ``labels.csv``) with
:func:`crysdiff.splits.random_split` and a fixed split seed, so the same seed gives the same files
byte for byte (gzip headers carry no time stamp). Every split folder holds ``split.json``: the
record positions and ids of each part, the sources, the seed and the files' SHA-256.

Quick mode takes seeded subsets of the full parts (a few hundred crystals), so quick ⊂ full.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crysdiff.splits import random_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLIT_SEED = 0
QUICK_SIZES = {"train": 300, "val": 60, "test": 120}


# --- sources: count records, write a subset --------------------------------------------------------


class CsvTable:
    """A CSV (optionally gzipped) with one crystal per row (the CDVAE convention, ``cif`` column)."""

    suffix = ".csv.gz"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._frame = None

    def frame(self):
        import pandas as pd

        if self._frame is None:
            frame = pd.read_csv(self.path, dtype={"material_id": str})
            # CDVAE files start with an unnamed index column; drop it so subsets have clean headers
            self._frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed")]]
        return self._frame

    def ids(self) -> list[str]:
        frame = self.frame()
        return [str(v) for v in frame["material_id"]] if "material_id" in frame else [str(k) for k in range(len(frame))]

    def write(self, positions: np.ndarray, path: Path) -> None:
        text = self.frame().iloc[positions].to_csv(index=False)
        _write_gzip(path, text)


class CifFolder:
    """A folder of ``structures/<id>.cif`` with a headed ``labels.csv`` (the CGCNN/ALIGNN layout)."""

    suffix = ".csv.gz"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._frame = None

    def frame(self):
        import pandas as pd

        if self._frame is None:
            self._frame = pd.read_csv(self.folder / "labels.csv", dtype={"material_id": str})
        return self._frame

    def ids(self) -> list[str]:
        return [str(v) for v in self.frame()["material_id"]]

    def write(self, positions: np.ndarray, path: Path) -> None:
        frame = self.frame().iloc[positions].copy()
        frame.insert(1, "cif", [(self.folder / "structures" / f"{i}.cif").read_text() for i in frame["material_id"]])
        _write_gzip(path, frame.to_csv(index=False))


class ExtxyzFrames:
    """A multi-frame extended XYZ file; subsets are the selected frames' text, unchanged."""

    suffix = ".extxyz"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._frames = None

    def frames(self) -> list[str]:
        if self._frames is None:
            lines = self.path.read_text().splitlines(keepends=True)
            frames, k = [], 0
            while k < len(lines):
                if not lines[k].strip():
                    k += 1
                    continue
                count = int(lines[k].split()[0])
                frames.append("".join(lines[k:k + count + 2]))
                k += count + 2
            self._frames = frames
        return self._frames

    def ids(self) -> list[str]:
        import shlex

        out = []
        for k, frame in enumerate(self.frames()):
            info = dict(item.split("=", 1) for item in shlex.split(frame.splitlines()[1]) if "=" in item)
            out.append(info.get("material_id", info.get("id", str(k))))
        return out

    def write(self, positions: np.ndarray, path: Path) -> None:
        frames = self.frames()
        Path(path).write_text("".join(frames[int(k)] for k in positions))


def _write_gzip(path: Path, text: str) -> None:
    # mtime=0 and no file name in the header: identical content gives identical bytes
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as out:
        out.write(text.encode())


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- split specs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split: ``train``, ``val``, ``test`` paths and the ``split.json`` record."""

    name: str
    folder: Path
    train: Path
    val: Path
    test: Path

    def info(self) -> dict:
        return json.loads((self.folder / "split.json").read_text())


def _seeded_parts(n: int, fractions: tuple[float, ...], seed: int) -> tuple[np.ndarray, ...]:
    return random_split(n, fractions, seed=seed)


def _quick(positions: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded subset of ``size`` positions (all if fewer), kept in source order."""
    if len(positions) <= size:
        return positions
    order = np.random.default_rng(seed).permutation(len(positions))[:size]
    return np.sort(positions[order])


def _write_split(name: str, root: Path, parts: dict[str, tuple], quick: bool, extra: dict | None = None) -> SplitFiles:
    """Write ``parts`` (part name -> (source, positions)) into ``root/name`` unless ``split.json`` exists."""
    folder = root / name
    paths = {part: folder / f"{part}{source.suffix}" for part, (source, _) in parts.items()}
    record = folder / "split.json"
    if not record.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        info = {"name": name, "seed": SPLIT_SEED, "quick": quick, "parts": {}, **(extra or {})}
        for part, (source, positions) in parts.items():
            if quick:
                positions = _quick(np.asarray(positions), QUICK_SIZES[part], SPLIT_SEED + 1)
            positions = np.sort(np.asarray(positions, dtype=np.int64))
            source.write(positions, paths[part])
            ids = source.ids()
            info["parts"][part] = {
                "source": str(getattr(source, "path", getattr(source, "folder", ""))),
                "count": int(len(positions)),
                "positions": positions.tolist(),
                "ids": [ids[int(k)] for k in positions],
                "file": paths[part].name,
                "sha256": sha256(paths[part]),
            }
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(record)  # written last: a split folder without split.json is rebuilt
    return SplitFiles(name, folder, paths["train"], paths["val"], paths["test"])


def seeded_split(name: str, source, root: Path, quick: bool, fractions=(0.8, 0.1, 0.1)) -> SplitFiles:
    """A seeded train / val / test split of one source (``mp_elastic``, ``matminer`` sets: 80/10/10)."""
    train, val, test = _seeded_parts(len(source.ids()), fractions, SPLIT_SEED)
    return _write_split(name, root, {"train": (source, train), "val": (source, val), "test": (source, test)}, quick)


def holdout_split(name: str, train_source, test_source, root: Path, quick: bool, val_fraction: float) -> SplitFiles:
    """Train and val from a seeded split of ``train_source``; the whole of ``test_source`` as test."""
    train, val = _seeded_parts(len(train_source.ids()), (1 - val_fraction, val_fraction), SPLIT_SEED)
    test = np.arange(len(test_source.ids()))
    return _write_split(name, root, {"train": (train_source, train), "val": (train_source, val),
                                     "test": (test_source, test)}, quick)


def refine_split(name: str, source, positions: np.ndarray, train_fraction: float, root: Path, quick: bool,
                 extra: dict) -> SplitFiles:
    """Table 2 protocol on a second source: a seeded ``train_fraction`` of ``positions`` to refine
    with (a tenth of it held out for validation), the rest to test on. The 20% training set is the
    first fifth of the same permutation as the 80% one, so 20% ⊂ 80%."""
    positions = np.asarray(positions, dtype=np.int64)
    order = positions[np.random.default_rng(SPLIT_SEED).permutation(len(positions))]
    cut = int(round(train_fraction * len(order)))
    refine, test = order[:cut], order[cut:]
    n_val = max(1, int(round(0.1 * len(refine))))
    train, val = refine[:-n_val], refine[-n_val:]
    return _write_split(name, root, {"train": (source, train), "val": (source, val), "test": (source, test)},
                        quick, extra)


# --- the second source for Table 2: flla_2015 materials absent from mp2018 -------------------------


def novel_positions(flla: ExtxyzFrames, mp2018_files: list[Path]) -> tuple[np.ndarray, dict]:
    """Frames of ``flla`` whose material is not in mp2018: not by ``material_id`` and not by
    structure (same reduced formula and a pymatgen ``StructureMatcher`` match, default tolerances).
    MP ids can change between database versions (flla_2015 is from 2015, mp2018 from 2018), hence
    the structural check. Returns the positions and the counts for ``split.json``."""
    import warnings

    from collections import Counter

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Composition, Element

    from crysdiff.cache import load_dataset
    from crysdiff.crystal import to_pymatgen

    mp = load_dataset([str(p) for p in mp2018_files], progress=False)
    mp_ids = {mp.id(i) for i in range(len(mp))}
    flla_ids = flla.ids()
    by_id = [k for k, i in enumerate(flla_ids) if i not in mp_ids]
    flla_cache = load_dataset([str(flla.path)], progress=False)
    flla_index = {flla_cache.id(i): i for i in range(len(flla_cache))}

    def reduced(crystal) -> str:
        counts = Counter(int(z) for z in crystal.atomic_numbers)
        return Composition({Element.from_Z(z): n for z, n in counts.items()}).reduced_formula

    candidates = {k: flla_cache.crystal(flla_index[flla_ids[k]]) for k in by_id if flla_ids[k] in flla_index}
    wanted = {reduced(c) for c in candidates.values()}
    mp_by_formula: dict[str, list[int]] = {}
    for i in range(len(mp)):
        crystal = mp.crystal(i)
        key = reduced(crystal)
        if key in wanted:
            mp_by_formula.setdefault(key, []).append(i)
    matcher = StructureMatcher()
    novel, same_structure = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, crystal in candidates.items():
            structure = to_pymatgen(crystal)
            twins = mp_by_formula.get(structure.composition.reduced_formula, [])
            if any(matcher.fit(structure, to_pymatgen(mp.crystal(i))) for i in twins):
                same_structure += 1
            else:
                novel.append(k)
    stats = {"flla_records": len(flla_ids), "in_mp2018_by_id": len(flla_ids) - len(by_id),
             "unreadable": len(by_id) - len(candidates), "in_mp2018_by_structure": same_structure,
             "novel": len(novel),
             "dedupe": "material_id, then same reduced formula + pymatgen StructureMatcher (default tolerances)"}
    return np.asarray(sorted(novel), dtype=np.int64), stats


# --- the named splits the suite uses ----------------------------------------------------------------


def build_split(name: str, root: Path, quick: bool = False, data: Path = DATA) -> SplitFiles:
    """The split ``name`` under ``root`` (written on first use, read afterwards)."""
    record = root / name / "split.json"
    if name == "mp2018":
        # mp2018 ships train and val only (the MP-2018 split's test members are not included):
        # its val file is our test set, and a seeded 5% of train selects the checkpoint
        return holdout_split(name, CsvTable(data / "mp2018" / "train.csv.gz"), CsvTable(data / "mp2018" / "val.csv.gz"),
                             root, quick, val_fraction=0.05)
    if name == "perov_5":
        # labels exist only in val and test: train on val (a seeded tenth held out), test on test
        return holdout_split(name, CsvTable(data / "perov_5" / "val.csv.gz"), CsvTable(data / "perov_5" / "test.csv.gz"),
                             root, quick, val_fraction=0.1)
    if name == "mp_elastic":
        return seeded_split(name, CifFolder(data / "mp_elastic"), root, quick)
    if name == "dielectric":
        return seeded_split(name, ExtxyzFrames(data / "matminer" / "dielectric_constant.extxyz"), root, quick)
    if name in ("flla_refine20", "flla_refine80"):
        flla = ExtxyzFrames(data / "matminer" / "flla_2015.extxyz")
        if record.is_file():
            return refine_split(name, flla, np.zeros(0, np.int64), 0.0, root, quick, {})  # already written
        positions, stats = _novel_cached(flla, data, root)
        return refine_split(name, flla, positions, 0.2 if name.endswith("20") else 0.8, root, quick, {"dedupe": stats})
    raise KeyError(f"unknown split {name!r}")


def _novel_cached(flla: ExtxyzFrames, data: Path, root: Path) -> tuple[np.ndarray, dict]:
    path = root / "flla_novel.json"
    if not path.is_file():
        positions, stats = novel_positions(flla, [data / "mp2018" / "train.csv.gz", data / "mp2018" / "val.csv.gz"])
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"positions": positions.tolist(), **stats}))
    payload = json.loads(path.read_text())
    return np.asarray(payload.pop("positions"), dtype=np.int64), payload
