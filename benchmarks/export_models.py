"""Copy the models trained by the training scripts into the repository and write their model cards
from what the checkpoints themselves record (config, data, budget, metrics).

    python benchmarks/export_models.py [--runs runs/default] [--perov runs/perov5]
    python benchmarks/export_models.py --ablation     # only models/ablation/README.md

* ``models/pretrained_pool.ckpt``: the denoiser pre-trained on the whole shared pool
  (``benchmarks/train_default_models.sh``, stage ``pretrain``), and ``models/pretrained_pool_long.ckpt``,
  the same model pre-trained for longer (stage ``pretrain_long``).
* ``src/crysdiff/models/<target>.ckpt``: the fine-tuned predictors shipped inside the package,
  loadable by name (``crysdiff predict --model formation_energy_per_atom ...``). When a second
  fine-tuning stage exists (``<target>_continued``) it is the one shipped, and the card adds up
  both stages' budgets.
* ``models/perov5_csp.ckpt``: the Perov-5 structure-prediction model (``benchmarks/csp_perov5.sh``).
* ``models/curves/*.png``: the training curves; ``models/README.md``: one model card per checkpoint.
* ``models/ablation/README.md``: cards for the ablation's pre-trained models, which
  ``python benchmarks/suite.py --part pretrain-ablation`` writes into ``models/ablation/`` itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


def _curve(run: Path | None, name: str) -> str:
    """Copy the run's loss curve into models/curves (a run that is gone keeps the committed one)."""
    source, target = (run / "loss_curve.png") if run else None, ROOT / "models" / "curves" / f"{name}.png"
    if source is not None and source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    if not target.is_file():
        return "not drawn"
    return f"[`models/curves/{name}.png`](curves/{name}.png)"


def _val_curve(runs: list[Path]) -> tuple[list[tuple[int, float]], list[int]]:
    """``(step, validation MAE)`` over consecutive fine-tuning stages, steps counted from the first,
    and the step at which each stage starts."""
    from crysdiff.engine import read_metrics

    points, starts, offset = [], [], 0
    for run in runs:
        rows = read_metrics(run)
        starts.append(offset)
        points += [(offset + int(r["step"]), r["val/mae"]) for r in rows if "val/mae" in r and "step" in r]
        offset += max((int(r["step"]) for r in rows if "step" in r), default=-1) + 1
    return points, starts


def _curve_stages(runs: list[Path], name: str, unit: str) -> str:
    """The validation MAE over both stages as models/curves/<name>.png, and a line for the card."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, starts = _val_curve(runs)
    if not points:
        return _curve(runs[-1], name)
    first_steps = starts[1] if len(starts) > 1 else starts[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = zip(*points)
    ax.plot(xs, ys, marker=".")
    ax.axvline(first_steps, color="grey", ls="--", lw=1, label="second stage starts (warm restart)")
    ax.set_xlabel("optimiser step (both stages)")
    ax.set_ylabel(f"validation MAE, S = 20 ({unit})")
    ax.set_title(f"fine-tuning on {name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = ROOT / "models" / "curves" / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    stages = [", ".join(f"{y:.3f}" for x, y in points if (x < first_steps) == first) for first in (True, False)]
    every = points[1][0] - points[0][0] if len(points) > 1 else 0
    return (f"[`models/curves/{name}.png`](curves/{name}.png); validation MAE (S = 20) every {every} steps, "
            f"first stage: {stages[0]}; second stage: {stages[1]}")


def _card_pretrain(path: Path, payload: dict, run: Path) -> str:
    config, data, training, metrics = payload["config"], payload["data"], payload.get("training", {}), payload.get("metrics", {})
    minutes = config["train"].get("max_time_minutes")
    return f"""## `models/{path.name}`: denoiser pre-trained on the shared pool

* **Data**: every structure under `../shared/data`, labels ignored: {data['train']['num_crystals']:,} crystals for
  training, {data['val']['num_crystals']:,} held out (seeded {config['data']['val_fraction']:.0%}) for validation.
  The pool contains the structures (not the labels) of every test split too, as unsupervised pre-training allows.
* **Budget**: {training.get('epochs', '?')} epochs stopped by a {minutes:g}-minute wall-clock cap, {training.get('steps', '?'):,} optimiser steps
  of {config['train']['batch_size']} crystals, on the 2-core CPU of the development machine (no GPU), shared with other work.
* **Model**: `DenoiserConfig` {json.dumps(config['model'])}; diffusion {json.dumps(config['diffusion'])}.
* **Validation loss** (the last pass, on the held-out crystals): total {metrics.get('val/loss', NAN):.4f},
  lattice {metrics.get('val/loss_lattice', NAN):.4f}, coordinates {metrics.get('val/loss_coords', NAN):.4f}
  (a network that outputs zeros scores about 1 on each term). Curves: {_curve(run, 'pretrained_pool')}.
* **Use**: `--init models/{path.name}` for fine-tuning (the shipped predictors start from it).
* **Reproduce**: `STEPS=pretrain bash benchmarks/train_default_models.sh`.
"""


def _card_pretrain_long(path: Path, payload: dict, run: Path | None, chain: list[tuple[str, dict]]) -> str:
    """A pool model pre-trained further (stages ``pretrain_long``, ``pretrain_long2``): this stage's budget,
    and the validation loss of every model of the chain it continues (``chain``: the pool model first,
    the one it started from last; the same held-out crystals)."""
    config, training, metrics = payload["config"], payload.get("training", {}), payload.get("metrics", {})
    train, init = config["train"], training.get("init", {})
    pool_steps = max(int(chain[0][1].get("training", {}).get("steps", 1)), 1)
    total = init.get("steps", 0) + training.get("steps", 0)
    names = " → ".join([f"`{name}`" for name, _ in chain] + ["this one"])
    losses = "; ".join(f"{what} " + " → ".join(f"{m.get('metrics', {}).get(key, NAN):.4f}" for _, m in chain)
                       + f" → {metrics.get(key, NAN):.4f}"
                       for what, key in (("total", "val/loss"), ("lattice", "val/loss_lattice"), ("coordinates", "val/loss_coords")))
    canonical = path.stem == "pretrained_canonical"
    stage = "pretrain_canonical" if canonical else "pretrain_long2" if path.stem.endswith("long2") else "pretrain_long"
    model = {"pretrain_canonical": "gaussian_learned_canonical", "pretrain_long2": "gaussian_learned_longpre2"}.get(
        stage, "gaussian_learned_longpre")
    title = {"pretrain_canonical": "continued on canonical cells", "pretrain_long2": "pre-trained longer still"}.get(
        stage, "pre-trained for longer")
    decay = ("cosine decay over its planned steps (no wall-clock cap)" if canonical or not train.get("anneal_over_time")
             else "cosine decay over the wall-clock cap")
    cells = config.get("data", {}).get("cell", {})
    cell_line = (f"\n* **Cells**: every structure reduced to its canonical cell (spglib primitive cell, Niggli-reduced, "
                 f"basis fixed by a fingerprint; symprec {cells.get('symprec')} Å, angle tolerance "
                 f"{cells.get('angle_tolerance')}°; docs/data.md, \"Canonical cells\"): the models it continues saw the "
                 f"cells as given, so their validation losses below are on the same crystals in other cells."
                 if cells.get("canonical") else "")
    use = ("the rebuild of the shipped predictors on canonical cells starts from it (`finetune_canonical` in "
           "`benchmarks/train_default_models.sh`, issue 20), and so does the suite's model `gaussian_learned_canonical`"
           if canonical else
           f"the suite's `longpre-sparse` and `longpre-table1` parts fine-tune from it (model `{model}`; `docs/results.md`, "
           "\"Pre-training for longer\"); the shipped predictors still start from `models/pretrained_pool.ckpt`")
    return f"""## `models/{path.name}`: the pool model {title}

* **Data**: the same pool and the same held-out crystals as `models/pretrained_pool.ckpt`
  ({payload['data']['train']['num_crystals']:,} for training, {payload['data']['val']['num_crystals']:,} for validation).
* **Start**: the weights of `{init.get('path', '?')}` ({init.get('steps', 0):,} steps in all), with a fresh AdamW and schedule
  (`crysdiff pretrain --init`).
* **Budget of this stage**: {training.get('epochs', '?')} epochs, {training.get('steps', 0):,} optimiser steps of {train['batch_size']} crystals,
  {training.get('seconds', NAN) / 60:.1f} min ({f"cap {train['max_time_minutes']:g}" if train['max_time_minutes'] else
  f"a budget of {train['max_steps']:,} steps"}), lr {train['lr']:g} with {train['warmup_steps']} warm-up steps and a
  {decay}, on the 2-core CPU (no GPU), shared at times with other work. In all {total:,} steps,
  {total / pool_steps:.1f}x the pool model's.{cell_line}
* **Validation loss**, {names} (the same held-out crystals; each checkpoint's last validation
  pass): {losses}.
  Curves: {_curve(run, path.stem)}.
* **Use**: {use}.
* **Reproduce**: `STEPS={stage} bash benchmarks/train_default_models.sh` (from the committed `{chain[-1][0]}`).
"""


def _stage(payload: dict) -> str:
    training, config = payload.get("training", {}), payload["config"]
    return (f"{training.get('epochs', '?')} epochs / {training.get('steps', 0):,} steps, "
            f"{training.get('seconds', NAN) / 60:.1f} min (cap {config['train'].get('max_time_minutes'):g}), "
            f"lr {config['train']['lr']:g}")


# which crystals the validation figures are on (issue 27): the same that chose what was shipped
HELD_OUT_NOTE = ("These figures are on the crystals that also chose what was shipped: the best checkpoint of each stage, "
                 "whether to run the second stage, and the interval's scale were all decided on mp2018/val, so they are "
                 "not held-out figures (mp2018 has no test split here; a held-out figure needs fine-tuning validated "
                 "on part of mp2018/val and scored on the rest). Two lines below go further: the cross-fitted "
                 "coverage is out of sample for the scale (each half "
                 "of the crystals scored with the scale fitted on the other half), and the other domain's crystals "
                 "chose nothing.")


# a shipped predictor carded from its checkpoint alone (its run folders gone): the second stage of
# train_default_models.sh, whose checkpoint records neither the first stage's budget nor the curve's values
UNRECORDED_FIRST_STAGE = ("it continues a first stage (`STEPS=finetune`) whose budget the shipped checkpoint does not "
                          "record and whose run folder is not kept")


def _card_finetune(path: Path, payload: dict, run: Path | None, first: dict | None, first_run: Path | None = None,
                   continued: bool = False) -> str:
    """One fine-tuned predictor's card; ``run=None``: from the checkpoint alone, ``continued``: it is a
    second stage whose first stage is not at hand."""
    config, data, normalizer = payload["config"], payload["data"], payload["normalizer"]
    metrics_file = run / "val_metrics.json" if run is not None else Path("/nonexistent")
    recorded = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    val = recorded.get("val", {}) if recorded else payload.get("metrics", {})
    holdout = recorded.get("holdout") or payload.get("metrics", {}).get("holdout")
    canonical = bool(config.get("data", {}).get("cell", {}).get("canonical"))
    # a checkpoint of canonical cells carded without its run folder is train_default_models.sh's
    # finetune_canonical stage: one stage from models/pretrained_canonical.ckpt (the checkpoint does not
    # name its start); the others are the second stage of the earlier recipe from the pool model
    continued = continued and not (canonical and run is None)
    start = "pretrained_canonical.ckpt" if canonical and run is None else "pretrained_pool.ckpt"
    init = Path(recorded.get("init", ROOT / "models" / start))
    init = init.resolve().relative_to(ROOT) if init.resolve().is_relative_to(ROOT) else init
    steps = "finetune_canonical" if canonical and (run is None or run.name.endswith("_canonical")) else \
        f"finetune{' continue' if first is not None or continued else ''}"
    scale = normalizer.get("interval_scale")
    calibration = "" if scale is None else (
        f"\n* **Calibrated interval**: fine-tuning fitted a split-conformal scale of {scale:.3f} for the spread on these"
        f" validation crystals (raw 95% coverage {val.get('coverage95', NAN):.3f}, in-sample after the scale"
        f" {val.get('coverage95_calibrated', NAN):.3f}); `crysdiff predict` applies it, `--raw-interval` does not.")
    unit = normalizer.get("unit", "")
    stages = [first, payload] if first is not None else [payload]
    total = sum(p.get("training", {}).get("seconds", 0.0) for p in stages) / 60
    budget = "; then ".join(_stage(p) for p in stages)
    budget_line = (f"{total:.0f} min of fine-tuning in all on the 2-core CPU (shared with other work), "
                   f"batch {config['train']['batch_size']}: {budget}")
    if continued and first is None:
        budget_line = (f"the shipped stage, on the 2-core CPU (shared with other work), batch {config['train']['batch_size']}: "
                       f"{budget}; {UNRECORDED_FIRST_STAGE}")
    bound = normalizer.get("lower_bound")
    uncertainty = ROOT / "benchmarks" / "results" / f"uncertainty_{normalizer['target']}.json"
    extra = ""
    if uncertainty.is_file():
        u = json.loads(uncertainty.read_text())
        readings = u.get("readings", {})
        if "calibrated_crossfit" in readings:
            raw, cross = readings["raw"], readings["calibrated_crossfit"]
            coverage = (f"95% coverage {raw['coverage95']:.3f} raw, {cross['coverage95']:.3f} calibrated out of sample "
                        f"(each half of the crystals moved by the scale fitted on the other half: "
                        f"{', '.join(f'{x:.3f}' for x in cross['fold_scales'])})")
        else:
            coverage = f"95% coverage {u['coverage95']:.3f}"
        rank = readings.get("raw", u).get("spearman_std_vs_abs_error")
        extra = (f"\n* **Uncertainty** (`{u['command']}`, S = {u['samples']}, on mp2018/val as above): {coverage}, "
                 f"MAE {u['mae']:.4f}" + (f", Spearman correlation of the raw std with |error| {rank:.2f}" if rank is not None
                                          else "") + "; coverage at every level and predicted std against error in "
                 f"`benchmarks/results/reliability_{normalizer['target']}.png`.")
    recal = ""
    recal_file = ROOT / "benchmarks" / "results" / "recalibrate.json"
    if recal_file.is_file():
        recal_results = json.loads(recal_file.read_text())
        for r in recal_results["results"]:
            if r["model"] == path.stem:
                at = {s["n"]: s for s in r["recalibrated"]}
                n = 100 if 100 in at else max(at)
                recal += (f"\n* **On another domain** ({r['description']}, {r['count']} crystals; "
                          f"`{recal_results['command']}`): MAE {r['mae']:.3f} {unit}, 95% coverage "
                          f"{r['shipped']['coverage']:.3f} with the shipped scale, {at[n]['coverage_mean']:.3f} after "
                          f"recalibrating on {n} of them (mean over {recal_results['repeats']} random picks, scored "
                          f"on the rest; median scale {at[n]['scale_median']:.2f}).")
    held_out = HELD_OUT_NOTE
    if holdout:
        held_out = (f"These figures are on the {data['val_count']:,} crystals that also chose the checkpoint and the "
                    f"interval's scale. **Held out** (the other {data.get('holdout_count', holdout.get('count', 0)):,} "
                    f"crystals of mp2018/val, a seeded half that chose nothing): MAE {holdout.get('mae', NAN):.4f} {unit}, "
                    f"RMSE {holdout.get('rmse', NAN):.4f}, 95% coverage {holdout.get('coverage95', NAN):.3f} with the "
                    f"shipped (calibrated) interval.")
    cells = ("\n* **Cells**: every structure is reduced to its canonical cell before the network sees it (spglib "
             "primitive cell, Niggli-reduced, basis fixed by a fingerprint; docs/data.md, \"Canonical cells\"), for "
             "training and prediction alike: any cell of a crystal gets the same answer." if canonical else "")
    return f"""## `{path.relative_to(ROOT)}`: {normalizer['target']} ({unit})

* **Data**: fine-tuned on `mp2018/train` ({data['train_count']:,} crystals with a value), validated on `mp2018/val`
  ({data['val_count']:,} crystals{f", {data['holdout_count']:,} more held out" if data.get('holdout_count') else ""}); target standardised with mean {normalizer['mean']:.4f} and std {normalizer['std']:.4f} {unit}.{
  f" Training values are all non-negative, so predicted samples are clipped at {bound:g}." if bound is not None else ""}
* **Start**: the encoder of `{init}`; head `{config['head']['kind']}` with prior `{config['head']['prior']}`.{cells}
* **Budget**: {budget_line}.
* **Validation (mp2018/val, S = {config.get('report_samples', 50)} samples, T = {config['property']['timesteps']})**: MAE {val.get('mae', NAN):.4f} {unit},
  RMSE {val.get('rmse', NAN):.4f}, R² {val.get('r2', NAN):.3f}, 95% interval coverage {val.get('coverage95', NAN):.3f} (raw),
  mean predicted std {val.get('mean_std', NAN):.4f} (raw), Pearson correlation of std with |error| {val.get('std_abs_error_corr', NAN):.2f}.
  {held_out}{calibration}{extra}
* **Curves**: {_curve_stages([first_run, run], normalizer['target'], unit) if first_run else _curve(run, normalizer['target'])}.
* **Use**: `crysdiff predict --model {path.stem} FILES...` or `crysdiff.load("{path.stem}")`. On another domain,
  `crysdiff calibrate --model {path.stem} --data LABELLED --out NEW.ckpt` refits the interval on labelled crystals from there.{recal}
* **Reproduce**: `STEPS="{steps}" bash benchmarks/train_default_models.sh` (from the committed `{init}`).
"""


def _card_perov(path: Path, payload: dict, run: Path) -> str:
    config, data, training, metrics = payload["config"], payload["data"], payload.get("training", {}), payload.get("metrics", {})
    results = ROOT / "benchmarks" / "results" / "csp_perov5.json"
    csp = "not measured yet"
    if results.is_file():
        r = json.loads(results.read_text())
        k = r["samples"]
        csp = (f"on {r['count']} seeded `perov_5/test` crystals: one-shot match rate {r['match_rate']:.1%} "
               f"(RMSE {r['rmse']:.4f}), best-of-{k} {r[f'match_rate_best_of_{k}']:.1%} (RMSE {r[f'rmse_best_of_{k}']:.4f}); "
               f"sampling {r['seconds_per_structure'] * 1000:.0f} ms per generated structure "
               f"(`benchmarks/results/csp_perov5.json`)")
    return f"""## `models/{path.name}`: crystal structure prediction on Perov-5

* **Data**: `perov_5/train` ({data['train']['num_crystals']:,} crystals), validated on `perov_5/val` ({data['val']['num_crystals']:,}).
* **Budget**: {training.get('epochs', '?')} epochs / {training.get('steps', 0):,} steps of {config['train']['batch_size']} crystals,
  {training.get('seconds', NAN) / 60:.1f} min (cap {config['train'].get('max_time_minutes'):g}) on the 2-core CPU, no GPU.
* **Model**: `DenoiserConfig` {json.dumps(config['model'])}; diffusion {json.dumps(config['diffusion'])}.
* **Validation loss**: total {metrics.get('val/loss', NAN):.4f}, lattice {metrics.get('val/loss_lattice', NAN):.4f},
  coordinates {metrics.get('val/loss_coords', NAN):.4f}. Curves: {_curve(run, 'perov5_csp')}.
* **CSP** (StructureMatcher stol=0.5, angle_tol=10, ltol=0.3): {csp}.
* **Use**: `crysdiff sample --model models/{path.name} --composition SrTiO3 --num-samples 10 --out samples/`.
* **Reproduce**: `bash benchmarks/csp_perov5.sh`.
"""


ABLATION_USE = {
    "lattice": "without joint diffusion, with `pretrained_coords.ckpt`: `--init models/ablation/pretrained_lattice.ckpt "
               "extra_init=models/ablation/pretrained_coords.ckpt`",
    "coords": "without joint diffusion, as the `extra_init` of `pretrained_lattice.ckpt` (above)",
    "cartesian": "without the equivariant encoder: `--init models/ablation/pretrained_cartesian.ckpt`",
}


def ablation_cards(folder: Path) -> str:
    """Cards for the ablation pre-trainings (``models/ablation/pretrained_<name>.ckpt``)."""
    import torch

    cards = ["# Pre-trained models of the ablation (paper Fig. 5)\n\n"
             "Generated by `python benchmarks/export_models.py --ablation` from the checkpoints. Each is pre-trained like "
             "`models/pretrained_pool.ckpt` (same pool, model, batch and wall-clock cap) with one design choice removed; "
             "`python benchmarks/suite.py --part pretrain-ablation` made them, `--part ablation` fine-tunes from them.\n"]
    for path in sorted(folder.glob("pretrained_*.ckpt")):
        payload = torch.load(path, weights_only=True)
        config, data, training, metrics = payload["config"], payload["data"], payload.get("training", {}), payload.get("metrics", {})
        name = path.stem.removeprefix("pretrained_")
        changed = (f"`diffusion.mode={config['diffusion']['mode']}`" if config["diffusion"].get("mode", "joint") != "joint"
                   else f"`model.kind={config['model'].get('kind')}`")
        losses = ", ".join(f"{key.removeprefix('val/')} {value:.4f}" for key, value in sorted(metrics.items()))
        cards.append(f"""## `models/ablation/{path.name}`

* **Change from the pool model**: {changed}.
* **Data**: {data['train']['num_crystals']:,} crystals for training, {data['val']['num_crystals']:,} held out for validation (labels ignored).
* **Budget**: {training.get('epochs', '?')} epochs / {training.get('steps', 0):,} steps of {config['train']['batch_size']} crystals,
  {training.get('seconds', NAN) / 60:.1f} min (cap {config['train'].get('max_time_minutes'):g}) on {training.get('device', '?')}, {training.get('torch_threads', '?')} threads.
* **Validation loss**: {losses} (a network that outputs zeros scores about 1 on each term).
* **Use**: {ABLATION_USE.get(name, f'`--init models/ablation/{path.name}`')}.
""")
    return "\n".join(cards)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--perov", type=Path, default=ROOT / "runs" / "perov5")
    parser.add_argument("--ablation", action="store_true", help="only write models/ablation/README.md")
    args = parser.parse_args()
    ablation = ROOT / "models" / "ablation"
    if any(ablation.glob("pretrained_*.ckpt")):
        (ablation / "README.md").write_text(ablation_cards(ablation))
        print(f"wrote {ablation / 'README.md'}")
    if args.ablation:
        return
    cards = ["# Shipped models\n\nEach card is generated by `python benchmarks/export_models.py` from what the checkpoint records.\n"
             "All were trained on this project's 2-core CPU development machine; the budgets are far below the\n"
             "paper's, so treat them as working defaults, not as the method's ceiling. The ablation's pre-trained\n"
             "models have their own cards in [`models/ablation/README.md`](ablation/README.md).\n"]
    (ROOT / "models").mkdir(exist_ok=True)
    pre, target = args.runs / "pretrain" / "model.ckpt", ROOT / "models" / "pretrained_pool.ckpt"
    if pre.is_file():
        shutil.copyfile(pre, target)
    if target.is_file():  # the committed one when this checkout has no pre-training run
        cards.append(_card_pretrain(target, torch.load(target, weights_only=True), pre.parent if pre.is_file() else None))
    chain = [(f"models/{target.name}", torch.load(target, weights_only=True))] if target.is_file() else []
    for stage, name in (("pretrain_long", "pretrained_pool_long.ckpt"), ("pretrain_long2", "pretrained_pool_long2.ckpt"),
                        ("pretrain_canonical", "pretrained_canonical.ckpt")):
        made, shipped = args.runs / stage / "model.ckpt", ROOT / "models" / name
        if made.is_file():
            shutil.copyfile(made, shipped)
        if shipped.is_file() and chain:
            payload = torch.load(shipped, weights_only=True)
            cards.append(_card_pretrain_long(shipped, payload, made.parent if made.is_file() else None, chain))
            chain.append((f"models/{name}", payload))
    runs = {p.name: p for p in args.runs.iterdir() if p.is_dir() and (p / "model.ckpt").is_file()} if args.runs.is_dir() else {}
    carded: set[Path] = set()
    for name in sorted(runs):
        if name == "pretrain" or name.endswith("_continued"):
            continue
        payload = torch.load(runs[name] / "model.ckpt", weights_only=True)
        if payload.get("kind") != "finetune":
            continue
        run, first, first_run = runs[name], None, None
        if f"{name}_continued" in runs:  # ship the second stage; its card counts both budgets
            first, first_run, run = payload, runs[name], runs[f"{name}_continued"]
            payload = torch.load(run / "model.ckpt", weights_only=True)
        target = ROOT / "src" / "crysdiff" / "models" / f"{payload['normalizer']['target']}.ckpt"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(run / "model.ckpt", target)
        cards.append(_card_finetune(target, payload, run, first, first_run))
        carded.add(target)
    for shipped in sorted((ROOT / "src" / "crysdiff" / "models").glob("*.ckpt")):
        if shipped not in carded:  # no run folder in this checkout: the card from what the checkpoint records
            cards.append(_card_finetune(shipped, torch.load(shipped, weights_only=True), None, None, continued=True))
    target = ROOT / "models" / "perov5_csp.ckpt"
    if (args.perov / "model.ckpt").is_file():
        shutil.copyfile(args.perov / "model.ckpt", target)
    if target.is_file():
        cards.append(_card_perov(target, torch.load(target, weights_only=True),
                                 args.perov if (args.perov / "model.ckpt").is_file() else None))
    (ROOT / "models" / "README.md").write_text("\n".join(cards))
    print("\n".join(cards))


if __name__ == "__main__":
    main()
