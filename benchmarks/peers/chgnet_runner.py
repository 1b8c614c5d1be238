"""CHGNet 0.4.2 pre-trained crystal features with a small head, the small-data benchmark's
foundation-model columns (benchmarks/smalldata.py).

Features: ``CHGNet.load()`` (the weights bundled in the wheel, CPU), ``predict_structure(...,
return_crystal_feas=True)``: the pooled crystal feature vector each structure gets before CHGNet's
energy head. Heads (scikit-learn, standardised features and target):

* ``--head ridge``: ``RidgeCV`` over alphas 1e-4 ... 1e4, alpha chosen by leave-one-out inside the
  training crystals (training fold + inner validation);
* ``--head mlp``: ``MLPRegressor`` (128, 64), early stopping on 10% of the training crystals, the
  L2 strength chosen among 1e-4, 1e-2, 1 on the inner validation split, then used for the test.

Runs in ``benchmarks/peers/.venv-chgnet`` (``bash benchmarks/peers/chgnet_setup.sh``)::

    benchmarks/peers/.venv-chgnet/bin/python benchmarks/peers/chgnet_runner.py --head ridge \
        --train T --val V --test S --target NAME --out DIR --features CACHE.json [--seed K]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.peers import feature_peer  # noqa: E402

RIDGE_ALPHAS = np.logspace(-4, 4, 17)
MLP_ALPHAS = (1e-4, 1e-2, 1.0)
BATCH = 16


def featurise(frames: list) -> tuple[list[str], np.ndarray]:
    from chgnet.model import CHGNet
    from pymatgen.io.ase import AseAtomsAdaptor

    model = CHGNet.load(verbose=False, use_device="cpu")
    structures = [AseAtomsAdaptor.get_structure(a) for a in frames]
    out = model.predict_structure(structures, task="e", return_crystal_feas=True, batch_size=BATCH)
    out = [out] if isinstance(out, dict) else out
    values = np.stack([np.asarray(o["crystal_fea"], dtype=np.float64).ravel() for o in out])
    return [f"chgnet_crystal_fea_{k}" for k in range(values.shape[1])], values


def _scaled(x_fit, *others):
    mean, std = x_fit.mean(0), x_fit.std(0)
    std[std == 0] = 1.0
    return [(x - mean) / std for x in (x_fit, *others)]


def fit_predict(head: str, seed: int):
    def fit(x_train, y_train, x_val, y_val, x_test):
        from sklearn.linear_model import RidgeCV
        from sklearn.neural_network import MLPRegressor

        centre, scale = y_train.mean(), y_train.std() or 1.0
        if head == "ridge":
            x_all, x_new = _scaled(np.concatenate([x_train, x_val]), x_test)
            model = RidgeCV(alphas=RIDGE_ALPHAS).fit(x_all, (np.concatenate([y_train, y_val]) - centre) / scale)
            return model.predict(x_new) * scale + centre, {"head": "RidgeCV", "alpha": float(model.alpha_)}
        x_fit, x_sel, x_new = _scaled(x_train, x_val, x_test)
        best = None
        for alpha in MLP_ALPHAS:
            model = MLPRegressor(hidden_layer_sizes=(128, 64), alpha=alpha, early_stopping=True, max_iter=500, random_state=seed)
            model.fit(x_fit, (y_train - centre) / scale)
            mae = float(np.mean(np.abs(model.predict(x_sel) * scale + centre - y_val)))
            if best is None or mae < best[0]:
                best = (mae, alpha, model)
        return best[2].predict(x_new) * scale + centre, {"head": "MLPRegressor (128, 64)", "alpha": best[1],
                                                         "val_mae": best[0]}
    return fit


def main(argv=None) -> int:
    parser = feature_peer.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--head", choices=("ridge", "mlp"), required=True)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    metrics = feature_peer.run(args, featurise, fit_predict(args.head, args.seed),
                               {"features_from": "CHGNet 0.4.2 crystal_fea", "head_kind": args.head})
    print(f"test MAE {metrics['mae']:.4g} ({metrics['count']} crystals)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
