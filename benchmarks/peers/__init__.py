"""Peer models for the property benchmarks (not part of the installed package).

* :mod:`benchmarks.peers.cgcnn`: a crystal graph convolutional network in the style of Xie &
  Grossman (2018); trained by :mod:`benchmarks.peers.train_cgcnn`
  (``python -m benchmarks.peers.train_cgcnn`` from the repository root).
* :mod:`benchmarks.peers.neighbors`: periodic neighbour lists within a cutoff.
* :mod:`benchmarks.peers.protocol`: the selection and output format shared by every peer runner
  (ALIGNN's is ``alignn_runner.py``, run in its own environment).
"""
