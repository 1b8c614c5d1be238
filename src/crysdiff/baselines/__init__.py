"""Peer models for the property benchmarks, trained on crysdiff's data layer and engine.

* :class:`CGCNN` (``crysdiff.baselines.cgcnn``): a crystal graph convolutional network in the
  style of Xie & Grossman (2018); train it with ``python -m crysdiff.baselines.cgcnn`` or
  :func:`run_cgcnn`.
* :func:`neighbor_list` / :func:`build_neighbor_table` (``crysdiff.baselines.neighbors``): periodic
  neighbour lists within a cutoff.
* :func:`select_split` / :func:`write_outputs` (``crysdiff.baselines.protocol``): the selection
  and output format shared by every peer runner (ALIGNN's lives in ``benchmarks/peers/``).

Names are imported lazily, so ``python -m crysdiff.baselines.cgcnn`` does not import the module
twice and importing the package costs nothing.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CGCNN": "cgcnn", "CGCNNConfig": "cgcnn", "GraphDataset": "cgcnn", "graph_batch": "cgcnn", "batch_from_crystals": "cgcnn",
    "NeighborSettings": "neighbors", "NeighborTable": "neighbors", "neighbor_list": "neighbors",
    "build_neighbor_table": "neighbors",
    "Selection": "protocol", "add_peer_arguments": "protocol", "select_split": "protocol", "write_outputs": "protocol",
    "regression_metrics": "protocol",
    "CGCNNRunConfig": "run", "CGCNNTask": "run", "run_cgcnn": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"crysdiff.baselines.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'crysdiff.baselines' has no attribute {name!r}")
