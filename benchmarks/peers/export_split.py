"""Write a split (train / val / test) in a format ALIGNN reads, selected exactly as crysdiff selects it.

Run in crysdiff's environment (ALIGNN's runner calls it for you)::

    .venv/bin/python -m benchmarks.peers.export_split --train TRAIN --val VAL --test TEST \\
        --target formation_energy_per_atom --out OUT/data [--seed S] [--label-fraction F] \\
        [--train-ids FILE --val-ids FILE --test-ids FILE]

Selection: :func:`benchmarks.peers.protocol.select_split` (ids files, labelled crystals only, the
seeded nested label fraction), the same code the CGCNN runner uses. Output, one file per part,
``OUT/{train,val,test}.json``: a JSON list in ALIGNN's own dataset convention (as in
``alignn.data.get_train_val_loaders(dataset_array=...)``), one record per crystal::

    {"jid": "<crysdiff record id>", "atoms": {"lattice_mat": [[...]] (rows = lattice vectors, Å),
     "coords": [[...]] (fractional), "elements": ["Cs", ...], "cartesian": false}, "target": <value>}

plus ``OUT/selection.json`` (counts, sources, ids files, seed, label fraction, unit). ``--minutes``
is accepted and ignored, so the runner can pass its own arguments through unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _records(selection, target: str) -> list[dict]:
    from pymatgen.core.periodic_table import Element

    cache = selection.cache
    z, frac, lattices, counts = cache.gather(selection.indices)
    start = np.concatenate([[0], np.cumsum(counts)])
    values = selection.targets(target)
    symbols = {}
    out = []
    for b, i in enumerate(selection.indices):
        atoms = z[start[b]:start[b + 1]]
        elements = [symbols.setdefault(int(a), Element.from_Z(int(a)).symbol) for a in atoms]
        out.append({
            "jid": cache.id(int(i)),
            "atoms": {"lattice_mat": lattices[b].tolist(), "coords": frac[start[b]:start[b + 1]].tolist(),
                      "elements": elements, "cartesian": False},
            "target": float(values[b]),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    if __package__:  # python -m benchmarks.peers.export_split (as alignn_runner.py calls it)
        from .protocol import add_peer_arguments, select_split
    else:  # python benchmarks/peers/export_split.py: this folder is sys.path[0]
        from protocol import add_peer_arguments, select_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_peer_arguments(parser)
    parser.set_defaults(minutes=0.0)
    for action in parser._actions:
        if action.dest == "minutes":
            action.required = False
    args = parser.parse_args(argv)
    parts = select_split(args.train, args.val, args.test, args.target, train_ids=args.train_ids, val_ids=args.val_ids,
                         test_ids=args.test_ids, label_fraction=args.label_fraction, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"target": args.target, "unit": parts["train"].cache.units.get(args.target, ""), "seed": args.seed,
               "label_fraction": args.label_fraction}
    for name, selection in parts.items():
        records = _records(selection, args.target)
        (out / f"{name}.json").write_text(json.dumps(records))
        summary[name] = {"sources": selection.sources, "count": len(records), "missing_dropped": selection.dropped_missing,
                         "ids_file": getattr(args, f"{name}_ids")}
    (out / "selection.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}: " + ", ".join(f"{n} {summary[n]['count']}" for n in parts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
