"""Train ALIGNN (the ``alignn`` package from PyPI, pure-PyTorch model) on a crysdiff split within a
wall-clock budget, and predict the test set.

Run with ALIGNN's own environment (``bash benchmarks/peers/alignn_setup.sh`` makes it)::

    .venv-alignn/bin/python benchmarks/peers/alignn_runner.py \\
        --train ../shared/data/mp2018/train.csv.gz --val ../shared/data/mp2018/val.csv.gz \\
        --test ../shared/data/mp2018/val.csv.gz --target formation_energy_per_atom --minutes 4 \\
        --out runs/peers/alignn_mp2018 [--seed S] [--label-fraction F] \\
        [--train-ids FILE --val-ids FILE --test-ids FILE] [model.hidden_features=256 ...]

The arguments are those of every peer runner (``benchmarks.peers.protocol``). Steps:

1. ``export_split.py`` runs in crysdiff's environment (``--crysdiff-python``, default
   ``.venv/bin/python``) and writes ``OUT/data/{train,val,test}.json``: the crystals crysdiff's
   selection keeps, in ALIGNN's dataset convention. ALIGNN's environment never imports crysdiff.
2. Graphs: ``alignn.torch_graph_builder.build_pure_torch_graph`` (ALIGNN's own builder): the 12
   nearest neighbours within 8 Å, CGCNN atom features (92); the line graph over all bonds is made
   per batch with ALIGNN's routine. Built before training, not counted in the budget (reported in
   ``metrics.json``).
3. Model: ``alignn.models.alignn_atomwise_pure.ALIGNNAtomWisePure`` (no DGL) set up for a
   graph-level property: no forces (``calculate_gradient=False``), no energy × atoms scaling, no
   bond-length penalty, no ZBL. Width and depth are scaled down for the CPU (see :data:`MODEL`).
4. Training: AdamW (lr 1e-3, weight decay 1e-5, batch 64), linear warm-up then a cosine decay over
   the wall-clock budget, L1 loss on the standardised target; validation every epoch (at least
   every tenth of the budget) and at the end; the weights with the best validation MAE are kept.
   With ``train.max_steps=N`` the budget is N steps instead (cosine over the steps, validation every
   tenth of them and at the end) and ``--minutes`` only a wall-clock safety cap.
5. ``OUT/test_predictions.csv`` (``id, y, pred, mean``) and ``OUT/metrics.json``, as the CGCNN runner.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# ALIGNN's published property settings are 4 ALIGNN + 4 GCN layers of width 256 (4.0 M parameters).
# On one CPU thread a batch of 64 mp2018 crystals takes ~17 s per step at that size, so a budget
# of minutes would see a few dozen steps; the default here is 2 + 2 layers of width 64 (0.15 M
# parameters, ~0.5 s per step). The published size is one override away (model.alignn_layers=4
# model.gcn_layers=4 model.hidden_features=256).
MODEL = dict(alignn_layers=2, gcn_layers=2, hidden_features=64, embedding_features=64, atom_input_features=92,
             edge_input_features=80, triplet_input_features=40, output_features=1)
GRAPH = dict(cutoff=8.0, max_neighbors=12, atom_features="cgcnn")
TRAIN = dict(batch_size=64, lr=1e-3, weight_decay=1e-5, warmup_steps=100, min_lr_ratio=0.05, loss="l1",
             val_fraction_of_budget=0.1, grad_clip=1.0, max_steps=0)
# max_steps > 0: a step budget (the cosine runs over these steps, validation every epoch and every tenth
# of them, --minutes only a wall-clock safety cap), so the budget means the same on any machine;
# 0: the cosine and the validations run over the wall-clock budget (issue 5's protocol).


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", "--data", dest="train", nargs="+", required=True, metavar="SRC")
    parser.add_argument("--val", nargs="+", required=True, metavar="SRC")
    parser.add_argument("--test", nargs="+", required=True, metavar="SRC")
    parser.add_argument("--target", required=True)
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-fraction", type=float, default=1.0)
    for part in ("train", "val", "test"):
        parser.add_argument(f"--{part}-ids", default=None, metavar="FILE")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--crysdiff-python", default=os.environ.get("CRYSDIFF_PYTHON", str(ROOT / ".venv" / "bin" / "python")),
                        help="python of crysdiff's environment, for export_split.py")
    parser.add_argument("--exported", default=None, help="a folder export_split.py already wrote (skips step 1)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="model.<ALIGNNAtomWisePureConfig field>=..., graph.cutoff=..., train.batch_size=...")
    args = parser.parse_args(argv)
    for name in ("train", "val", "test"):  # key=value written after --test SRC lands in that list
        values = getattr(args, name)
        moved = [v for v in values if re.match(r"^[A-Za-z_][\w.]*=", v) and not Path(v).exists()]
        setattr(args, name, [v for v in values if v not in moved])
        args.overrides = moved + args.overrides
    return args


def apply_overrides(overrides: list[str]) -> tuple[dict, dict, dict]:
    sections = {"model": dict(MODEL), "graph": dict(GRAPH), "train": dict(TRAIN)}
    for item in overrides:
        key, _, text = item.partition("=")
        section, _, name = key.partition(".")
        if section not in sections or not name:
            raise SystemExit(f"override {item!r}: expected model.X=, graph.X= or train.X=")
        if section != "model" and name not in sections[section]:
            raise SystemExit(f"override {item!r}: unknown key (known: {', '.join(sections[section])})")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        sections[section][name] = value
    return sections["model"], sections["graph"], sections["train"]


# --- data ---------------------------------------------------------------------------------------------


def export(args, data_dir: Path) -> None:
    command = [args.crysdiff_python, "-m", "benchmarks.peers.export_split", "--train", *args.train, "--val", *args.val,
               "--test", *args.test, "--target", args.target, "--out", str(data_dir), "--seed", str(args.seed),
               "--label-fraction", str(args.label_fraction)]
    for part in ("train", "val", "test"):
        if getattr(args, f"{part}_ids"):
            command += [f"--{part}-ids", getattr(args, f"{part}_ids")]
    subprocess.run(command, check=True, cwd=ROOT)


def build_graphs(records: list[dict], graph: dict) -> list:
    """ALIGNN's bond graph of each crystal (``alignn.torch_graph_builder.build_pure_torch_graph``).

    The line graph (bond pairs sharing an atom) is not stored: it is ~30 bytes per angle, 70% of
    the memory, and is rebuilt per batch by ALIGNN's own routine (:func:`batches`)."""
    from jarvis.core.atoms import Atoms

    from alignn.torch_graph_builder import build_pure_torch_graph

    graphs = []
    for record in records:
        a = record["atoms"]
        atoms = Atoms(lattice_mat=a["lattice_mat"], coords=a["coords"], elements=a["elements"], cartesian=False)
        g = build_pure_torch_graph(atoms, two_body_cutoff=float(graph["cutoff"]), max_neighbors=int(graph["max_neighbors"]),
                                   atom_features=graph["atom_features"], compute_line_graph=False)
        for key in ("frac_coords", "V"):  # never read by a property model
            g.ndata.pop(key, None)
        g.edata.pop("images", None)
        graphs.append(g)
    return graphs


def batches(graphs, targets: np.ndarray, batch_size: int, order: np.ndarray):
    """``(g, lg, y [B], chosen)``: the batched bond graph and its line graph over all bonds, which is
    what ``build_pure_torch_graph`` + ``batch_torch_graph_pairs`` give (bonds never cross crystals,
    so the batch's line graph is the union of the crystals' line graphs)."""
    from alignn.torch_graph_builder import TorchGraph, _line_graph_edges, batch_torch_graphs

    for lo in range(0, order.shape[0], batch_size):
        chosen = order[lo:lo + batch_size]
        g = batch_torch_graphs([graphs[i] for i in chosen])
        lg_src, lg_dst = _line_graph_edges(g.src, g.dst, g.num_nodes)
        lg = TorchGraph(num_nodes=g.num_edges, src=lg_src, dst=lg_dst)
        yield g, lg, torch.as_tensor(targets[chosen], dtype=torch.float64), chosen


# --- training -----------------------------------------------------------------------------------------


def make_model(model_settings: dict):
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    config = ALIGNNAtomWisePureConfig(name="alignn_atomwise_pure", calculate_gradient=False, gradwise_weight=0.0,
                                      energy_mult_natoms=False, use_penalty=False, use_zbl=False, **model_settings)
    return ALIGNNAtomWisePure(config), config


@torch.no_grad()
def predict(model, pairs, targets, mean: float, std: float, batch_size: int) -> np.ndarray:
    model.eval()
    out = np.empty(len(pairs))
    for g, lg, _, chosen in batches(pairs, targets, batch_size, np.arange(len(pairs))):
        out[chosen] = model((g, lg, None))["out"].double().numpy() * std + mean
    return out


def train(model, data: dict, train_settings: dict, budget_seconds: float, seed: int) -> dict:
    mean, std = data["mean"], data["std"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_settings["lr"], weight_decay=train_settings["weight_decay"])
    warmup, floor = int(train_settings["warmup_steps"]), float(train_settings["min_lr_ratio"])
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    max_steps = int(train_settings.get("max_steps") or 0)
    val_every = max(1.0, train_settings["val_fraction_of_budget"] * budget_seconds)
    val_every_steps = max(1, math.ceil(max_steps / 10)) if max_steps else 0
    best = {"mae": math.inf, "state": None, "step": 0}
    history, step, epoch, last_val = [], 0, 0, started

    def validate():
        predicted = predict(model, data["val"], data["val_y"], mean, std, train_settings["batch_size"])
        mae = float(np.mean(np.abs(predicted - data["val_y"])))
        history.append({"step": step, "epoch": epoch, "seconds": time.perf_counter() - started, "val_mae": mae})
        if mae < best["mae"]:
            best.update(mae=mae, state=copy.deepcopy(model.state_dict()), step=step)
        model.train()

    done = False
    model.train()
    while not done:
        order = rng.permutation(len(data["train"]))
        for g, lg, y, _ in batches(data["train"], data["train_y"], train_settings["batch_size"], order):
            elapsed = time.perf_counter() - started
            if elapsed >= budget_seconds or (max_steps and step >= max_steps):
                done = True
                break
            if max_steps:
                progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            else:
                progress = elapsed / budget_seconds
            factor = (step + 1) / warmup if step < warmup else floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = train_settings["lr"] * factor
            prediction = model((g, lg, None))["out"]
            target = ((y - mean) / std).float()
            loss = F.l1_loss(prediction, target) if train_settings["loss"] == "l1" else F.mse_loss(prediction, target)
            optimizer.zero_grad()
            loss.backward()
            if train_settings["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(train_settings["grad_clip"]))
            optimizer.step()
            step += 1
            if (step % val_every_steps == 0) if max_steps else (time.perf_counter() - last_val >= val_every):
                validate()
                last_val = time.perf_counter()
        else:
            epoch += 1
            if not max_steps:  # a step budget validates every tenth of its steps instead
                validate()
            last_val = time.perf_counter()
    validate()  # the weights at the end of the budget
    if best["state"] is not None:  # None only if every validation MAE was NaN (a diverged run)
        model.load_state_dict(best["state"])
    return {"steps": step, "epochs_completed": epoch, "best_val_mae": best["mae"], "best_step": best["step"],
            "planned_steps": max_steps, "schedule": "steps" if max_steps else "wall clock",
            "stopped_by_cap": bool(max_steps) and step < max_steps,
            "history": history, "train_seconds": time.perf_counter() - started}


def metrics_of(y, pred) -> dict:
    error = np.asarray(pred) - np.asarray(y)
    total = float(np.sum((y - np.mean(y)) ** 2))
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error**2))),
            "r2": float(1 - np.sum(error**2) / total) if total > 0 else math.nan, "count": int(len(y))}


def main(argv=None) -> int:
    import alignn

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_settings, graph_settings, train_settings = apply_overrides(args.overrides)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_dir = Path(args.exported) if args.exported else out / "data"
    if not args.exported:
        export(args, data_dir)
    exported = time.perf_counter()
    records = {part: json.loads((data_dir / f"{part}.json").read_text()) for part in ("train", "val", "test")}
    selection = json.loads((data_dir / "selection.json").read_text())
    data = {part: build_graphs(records[part], graph_settings) for part in records}
    graphs = time.perf_counter()
    for part in records:
        data[f"{part}_y"] = np.array([r["target"] for r in records[part]], dtype=np.float64)
    data["mean"], data["std"] = float(data["train_y"].mean()), float(data["train_y"].std() or 1.0)

    model, config = make_model(model_settings)
    training = train(model, data, train_settings, 60.0 * args.minutes, args.seed)
    trained = time.perf_counter()
    pred = predict(model, data["test"], data["test_y"], data["mean"], data["std"], train_settings["batch_size"])
    torch.save({"config": config.model_dump() if hasattr(config, "model_dump") else dict(config),
                "state_dict": model.state_dict(), "mean": data["mean"], "std": data["std"]}, out / "model.pt")
    ids = [r["jid"] for r in records["test"]]
    import pandas as pd

    pd.DataFrame({"id": ids, "y": data["test_y"], "pred": pred, "mean": pred}).to_csv(out / "test_predictions.csv", index=False)
    history = training.pop("history")
    metrics = {
        **metrics_of(data["test_y"], pred),
        "seconds": {"export": exported - started, "graphs": graphs - exported, "train": trained - graphs,
                    "predict": time.perf_counter() - trained, "total": time.perf_counter() - started},
        "settings": {
            "model": "alignn", "alignn_version": getattr(alignn, "__version__", "?"), "torch": torch.__version__,
            "model_class": "alignn.models.alignn_atomwise_pure.ALIGNNAtomWisePure", "target": args.target,
            "unit": selection.get("unit", ""), "minutes": args.minutes, "seed": args.seed,
            "label_fraction": args.label_fraction, "train": selection["train"], "val": selection["val"],
            "test": selection["test"], "model_settings": model_settings, "graph": graph_settings,
            "training": train_settings, "parameters": sum(p.numel() for p in model.parameters()),
            "torch_threads": torch.get_num_threads(), **training,
        },
        "val": {"mae": training["best_val_mae"], "count": len(records["val"])},
        "graphs_per_second": sum(len(records[p]) for p in records) / max(graphs - exported, 1e-9),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "val_history.json").write_text(json.dumps(history, indent=2))
    print(f"alignn {args.target}: test MAE {metrics['mae']:.4g} over {metrics['count']} crystals "
          f"({training['steps']} steps in {training['train_seconds']:.0f} s); wrote {out}/test_predictions.csv",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
