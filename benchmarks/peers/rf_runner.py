"""Random forest on matminer features, the small-data benchmark's RF column (benchmarks/smalldata.py).

Features (matminer): ``ElementProperty.from_preset("magpie")`` of the composition (132),
``DensityFeatures`` (density, volume per atom, packing fraction) and ``GlobalSymmetryFeatures``
(space-group number, crystal system as an integer, centrosymmetry, number of symmetry operations)
of the structure: the family of Matbench's RF-SCM/Magpie baseline. Model: scikit-learn's
``RandomForestRegressor`` with **fixed** hyper-parameters (500 trees, otherwise scikit-learn's
defaults; nothing tuned), fitted on the training and inner-validation crystals together (it needs
no early stopping). A feature matminer cannot compute for a crystal is NaN, which the forest's
splitter handles.

Runs in ``benchmarks/peers/.venv-matminer`` (``bash benchmarks/peers/matminer_setup.sh``)::

    benchmarks/peers/.venv-matminer/bin/python benchmarks/peers/rf_runner.py --train T --val V \
        --test S --target NAME --out DIR --features CACHE.json [--seed K] [--threads N]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.peers import feature_peer  # noqa: E402

TREES = 500
SYMMETRY = ["spacegroup_num", "crystal_system_int", "is_centrosymmetric", "n_symmetry_ops"]


def featurise(frames: list) -> tuple[list[str], np.ndarray]:
    from matminer.featurizers.composition import ElementProperty
    from matminer.featurizers.structure import DensityFeatures, GlobalSymmetryFeatures
    from pymatgen.io.ase import AseAtomsAdaptor

    magpie, density = ElementProperty.from_preset("magpie"), DensityFeatures()
    symmetry = GlobalSymmetryFeatures(desired_features=SYMMETRY)
    names = magpie.feature_labels() + density.feature_labels() + symmetry.feature_labels()
    rows = []
    for atoms in frames:
        structure = AseAtomsAdaptor.get_structure(atoms)
        row = []
        for featurizer, item in ((magpie, structure.composition), (density, structure), (symmetry, structure)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    row += [float(v) for v in featurizer.featurize(item)]
                except (ValueError, TypeError, ArithmeticError):
                    row += [float("nan")] * len(featurizer.feature_labels())
        rows.append(row)
    return names, np.asarray(rows, dtype=np.float64)


def fit_predict(seed: int, threads: int):
    def fit(x_train, y_train, x_val, y_val, x_test):
        from sklearn.ensemble import RandomForestRegressor

        model = RandomForestRegressor(n_estimators=TREES, random_state=seed, n_jobs=threads)
        model.fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]))
        return model.predict(x_test), {"model": "RandomForestRegressor", "n_estimators": TREES,
                                       "hyperparameters": "fixed (scikit-learn defaults, 500 trees)",
                                       "fitted_on": "train + inner validation"}
    return fit


def main(argv=None) -> int:
    args = feature_peer.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    metrics = feature_peer.run(args, featurise, fit_predict(args.seed, args.threads),
                               {"features_from": "matminer magpie + DensityFeatures + GlobalSymmetryFeatures"})
    print(f"test MAE {metrics['mae']:.4g} ({metrics['count']} crystals)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
