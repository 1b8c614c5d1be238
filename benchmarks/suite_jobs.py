"""The suite's job table (used by ``suite.py``, ``report.py`` and the tests): tasks, model columns,
experiments, ablation pre-trainings, peer runners, the job list of each part with its time estimate,
and where each job's files go and what state it is in. Declarative and cheap to import: nothing here
imports torch or crysdiff.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PART_LIMIT_MINUTES = 120  # each part, one seed at a time (--seeds S), must finish within 2 hours here


# --- tasks, models, experiments: the declarative table ------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A property on a split. ``budget_minutes``: fine-tuning wall clock of every model on this task
    (equal across models); ``overhead_minutes``: measured-order start-up, final validation and test
    prediction per job, for the time estimate only."""

    split: str
    target: str
    label: str
    budget_minutes: float
    overhead_minutes: float
    val_every_steps: int


TASKS: dict[str, Task] = {
    # Table 1 (seven properties)
    "mp2018_formation": Task("mp2018", "formation_energy_per_atom", "formation energy (mp2018)", 4.0, 0.75, 150),
    "mp2018_band_gap": Task("mp2018", "band_gap", "band gap (mp2018)", 4.0, 0.75, 150),
    "mp_elastic_bulk": Task("mp_elastic", "K_VRH", "bulk modulus (mp_elastic)", 1.5, 0.3, 50),
    "mp_elastic_shear": Task("mp_elastic", "G_VRH", "shear modulus (mp_elastic)", 1.5, 0.3, 50),
    "perov5_heat": Task("perov_5", "heat_ref", "heat of formation (perov_5)", 1.5, 0.4, 50),
    "dielectric_band_gap": Task("dielectric", "band_gap", "band gap (matminer dielectric)", 1.5, 0.3, 50),
    "dielectric_n": Task("dielectric", "n", "refractive index (matminer dielectric)", 1.5, 0.3, 50),
    # Table 2 protocol: the second source (flla_2015 materials absent from mp2018)
    "flla_refine20": Task("flla_refine20", "formation_energy_per_atom", "flla_2015 novel, refine on 20%", 3.0, 0.3, 50),
    "flla_refine80": Task("flla_refine80", "formation_energy_per_atom", "flla_2015 novel, refine on 80%", 3.0, 0.3, 50),
}


@dataclass(frozen=True)
class Model:
    """How a column is trained. ``init``: ``"pool"`` (models/pretrained_pool.ckpt), an ablation
    pre-training name (``lattice``, ``coords``, ``cartesian``), ``"job"`` (the fine-tuned model of
    the job's ``init_job``), or ``None`` (random encoder). ``evaluate_only``: no training, the
    ``init_job``'s model is tested as it is. ``peer``: trained by a :data:`PEERS` runner.
    ``extra_overhead_minutes``: time on top of the task's overhead, for the estimate only;
    ``extra_overhead_by_split`` overrides it per split where it grows with the task's size (measured)."""

    label: str
    init: str | None = "pool"
    overrides: tuple[str, ...] = ()
    extra_init: str = ""
    evaluate_only: bool = False
    peer: bool = False
    extra_overhead_minutes: float = 0.0
    extra_overhead_by_split: tuple[tuple[str, float], ...] = ()

    def extra_overhead(self, split: str) -> float:
        return dict(self.extra_overhead_by_split).get(split, self.extra_overhead_minutes)


# The paper's head (CARD head, constant prior ȳ). It was crysdiff's default until 2026-11-30, when
# the Gaussian head around CARD's learned prior became the default; the columns measured with it
# name it explicitly, so that their commands keep their meaning whatever the default.
PAPER_HEAD = ("head.kind=card", "head.prior=mean")

MODELS: dict[str, Model] = {
    "crysdiff": Model("crysdiff (pre-trained + CARD head, constant prior)", overrides=PAPER_HEAD),
    "scratch": Model("same network from scratch (CARD head)", init=None, overrides=PAPER_HEAD),
    "regression": Model("pre-trained encoder + regression head", overrides=("head.kind=regression", "head.prior=mean")),
    "regression_scratch": Model("random encoder + regression head", init=None,
                                overrides=("head.kind=regression", "head.prior=mean")),
    "eq4": Model("pre-trained, literal Eq. 4 head", overrides=("head.kind=eq4", "head.prior=mean")),
    "learned_prior": Model("pre-trained, CARD learned prior f(x)", overrides=("head.kind=card", "head.prior=learned")),
    "gaussian": Model("pre-trained, Gaussian-parameterised diffusion head", overrides=("head.kind=gaussian", "head.prior=mean")),
    "composition": Model("pre-trained + diffusion head + composition skip",
                         overrides=(*PAPER_HEAD, "head.composition=true")),
    "scratch_composition": Model("from scratch + diffusion head + composition skip", init=None,
                                 overrides=(*PAPER_HEAD, "head.composition=true")),
    "regression_composition": Model("pre-trained + regression head + composition skip",
                                    overrides=("head.kind=regression", "head.composition=true")),
    "regression_scratch_composition": Model("random encoder + regression head + composition skip", init=None,
                                            overrides=("head.kind=regression", "head.composition=true")),
    "gaussian_learned": Model("crysdiff (pre-trained + Gaussian head, learned prior)",
                              overrides=("head.kind=gaussian", "head.prior=learned")),
    "scratch_gaussian_learned": Model("same network from scratch (Gaussian head, learned prior)", init=None,
                                      overrides=("head.kind=gaussian", "head.prior=learned")),
    # the default head on the pool model pre-trained for longer (models/pretrained_pool_long.ckpt: the
    # pool model continued on the same pool; see models/README.md): does more pre-training help?
    "gaussian_learned_longpre": Model("crysdiff, longer pre-training (Gaussian head, learned prior)", init="pool_long",
                                      overrides=("head.kind=gaussian", "head.prior=learned")),
    # ... and on that model pre-trained further still (models/pretrained_pool_long2.ckpt)
    "gaussian_learned_longpre2": Model("crysdiff, longer pre-training still (Gaussian head, learned prior)",
                                       init="pool_long2", overrides=("head.kind=gaussian", "head.prior=learned")),
    # ... and on the pool model continued on canonical cells (models/pretrained_canonical.ckpt, issue 20): the
    # pre-training the shipped predictors start from since their rebuild
    "gaussian_learned_canonical": Model("crysdiff, pre-trained on canonical cells (Gaussian head, learned prior)",
                                        init="canonical", overrides=("head.kind=gaussian", "head.prior=learned")),
    # ... with a head that reads every layer's pooled atom states (head.layers=all): the linear probe finds
    # more formation energy in all of that encoder's layers together than in its last (benchmarks/probe.py)
    "gaussian_learned_longpre2_layers": Model("crysdiff, longer pre-training still, head reads all layers "
                                              "(Gaussian head, learned prior)", init="pool_long2",
                                              overrides=("head.kind=gaussian", "head.prior=learned", "head.layers=all")),
    # Fig. 5 compares against "crysdiff" above, so its variants keep the paper's head too
    "no_jd": Model("w/o joint diffusion", init="lattice", extra_init="coords", overrides=PAPER_HEAD,
                   extra_overhead_minutes=0.2),
    "no_egnn": Model("w/o equivariant encoder", init="cartesian", overrides=PAPER_HEAD),
    # without fixed structures every validation and test crystal is encoded structure_encodings (20)
    # times, and the graphs of mp2018's larger cells cost more per crystal: measured on seeds 0 and 1,
    # 20.8 and 19.7 min per mp2018 job (4 min budget), 1.9 min per mp_elastic job (1.5 min budget)
    "no_fs": Model("w/o fixing structures", overrides=(*PAPER_HEAD, "fix_structure=false"), extra_overhead_minutes=0.3,
                   extra_overhead_by_split=(("mp2018", 16.0),)),
    "no_ue": Model("w/o updating the encoder", overrides=(*PAPER_HEAD, "freeze_encoder=true")),
    "dft_only": Model("mp2018 model, no refinement (before)", init="job", evaluate_only=True),
    "refined": Model("mp2018 model refined on the second source (after)", init="job"),
}

FRACTIONS_SPARSE = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
LONGPRE_MODELS = ("gaussian_learned_longpre", "gaussian_learned_longpre2")  # by length of pre-training
BASE_REFINE = "mp2018_formation"  # the first source of the Table 2 protocol


@dataclass(frozen=True)
class Experiment:
    """One part of the suite: the product tasks x models x fractions x seeds."""

    tasks: tuple[str, ...]
    models: tuple[str, ...]
    fractions: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0, 1)
    peers: tuple[str, ...] = ()  # peer columns, generated when registered in PEERS
    quick_tasks: tuple[str, ...] | None = None  # --quick runs only these tasks (None: all; (): none), to stay within 30 min
    budget_minutes: float | None = None  # every job's budget (None: the task's own)
    budget_steps: int = 0  # optimiser steps per crysdiff job (0: the wall clock is the budget); see STEP_CAP_FACTOR


TABLE1_TASKS = ("mp2018_formation", "mp2018_band_gap", "mp_elastic_bulk", "mp_elastic_shear", "perov5_heat",
                "dielectric_band_gap", "dielectric_n")

EXPERIMENTS: dict[str, Experiment] = {
    "table1": Experiment(TABLE1_TASKS,
                         ("crysdiff", "scratch", "regression"),
                         peers=("alignn", "cgcnn")),
    # Table 1's second crysdiff head and its from-scratch twin (a part of its own, so that each part
    # stays within 2 hours per seed); the report shows them as Table 1 columns
    "table1-heads": Experiment(TABLE1_TASKS, ("gaussian_learned", "scratch_gaussian_learned"),
                               quick_tasks=("mp2018_formation", "mp_elastic_bulk")),
    # Table 1's formation-energy row at five times its budget: does the ranking of the 4-minute row hold
    # when every model trains longer? (default head, its scratch twin, the regression head, CGCNN)
    "table1-long": Experiment(("mp2018_formation",), ("gaussian_learned", "scratch_gaussian_learned", "regression"),
                              seeds=(0,), peers=("cgcnn",), budget_minutes=20.0),
    # the band-gap row likewise (a part of its own, so that each part stays within 2 hours)
    # (no quick form: at the quick budget it would repeat table1's quick jobs, and it keeps --quick within 30 min)
    "table1-long-gap": Experiment(("mp2018_band_gap",), ("gaussian_learned", "scratch_gaussian_learned"),
                                  seeds=(0,), peers=("cgcnn",), quick_tasks=(), budget_minutes=20.0),
    "sparse": Experiment(("mp2018_formation", "mp_elastic_bulk"), ("crysdiff", "scratch"), FRACTIONS_SPARSE, seeds=(0,),
                         peers=("alignn",)),
    # Fig. 4 for the default head (Gaussian head around CARD's learned prior) and its scratch twin
    "sparse-heads": Experiment(("mp2018_formation", "mp_elastic_bulk"), ("gaussian_learned", "scratch_gaussian_learned"),
                               FRACTIONS_SPARSE, seeds=(0,), quick_tasks=("mp_elastic_bulk",)),
    # the default head started from the longer pre-trainings, on Fig. 4's tasks and fractions and on the
    # rest of Table 1 (the report sets them beside the same head started from the pool model and from scratch)
    # (no quick form: --quick must stay within 30 min, and the quick Fig. 4 has the pool model's rows)
    "longpre-sparse": Experiment(("mp2018_formation", "mp_elastic_bulk"), LONGPRE_MODELS, FRACTIONS_SPARSE,
                                 seeds=(0,), quick_tasks=()),
    "longpre-table1": Experiment(TABLE1_TASKS, LONGPRE_MODELS, seeds=(0,), quick_tasks=()),
    # Table 1's default-head rows on the canonical-cell pre-training, beside the same head on the pool model, run
    # at step budgets (issue 20 item 5; no quick form: --quick must stay within 30 min)
    "table1-canonical": Experiment(TABLE1_TASKS, ("gaussian_learned_canonical", "gaussian_learned"), seeds=(0,),
                                   quick_tasks=()),
    "ablation": Experiment(("mp2018_formation", "mp_elastic_bulk"), ("crysdiff", "no_jd", "no_egnn", "no_fs", "no_ue")),
    # refine: per seed, the mp2018 model (shared with table1) and, on each second-source split, the
    # model before refinement, after refinement, and pre-trained + fine-tuned on the second source only
    "refine": Experiment(("flla_refine20", "flla_refine80"), ("dft_only", "refined", "crysdiff")),
    "variants": Experiment(("mp2018_formation",), ("crysdiff", "eq4", "learned_prior", "gaussian", "regression",
                                                   "scratch", "regression_scratch"), (0.1, 1.0), seeds=(0,)),
    # later variants, at all the labels only (the report shows them in the variant table)
    "variants-extra": Experiment(("mp2018_formation",), ("composition", "scratch_composition", "regression_composition",
                                                         "regression_scratch_composition", "gaussian_learned",
                                                         "scratch_gaussian_learned"), (1.0,), seeds=(0,)),
    # the head that reads every layer (head.layers=all) beside the same head on the last layer, both from the
    # longest pre-training (no quick form: --quick must stay within 30 min; the report shows it in the variant table)
    "variants-layers": Experiment(("mp2018_formation",), ("gaussian_learned_longpre2", "gaussian_learned_longpre2_layers"),
                                  (1.0,), seeds=(0,), quick_tasks=()),
}

# Options measured and removed from crysdiff (issue 23): columns trained with one keep their results for
# the report ("Tried and dropped" in docs/results.md, benchmarks/reporting/dropped.py) and never run again
REMOVED_OPTIONS = ("head.layers=all", "head.composition=true", "head.kind=card_mlp", "head.baseline=zero")


def removed_option(model: str) -> str | None:
    """The removed option column ``model`` was trained with, or ``None``."""
    overrides = MODELS[model].overrides if model in MODELS else ()
    return next((o for o in overrides if o in REMOVED_OPTIONS), None)


# Ablation pre-trainings (paper Fig. 5): same data, model and budget as models/pretrained_pool.ckpt
PRETRAININGS: dict[str, tuple[str, ...]] = {
    "lattice": ("diffusion.mode=lattice",),
    "coords": ("diffusion.mode=coords",),
    "cartesian": ("model.kind=cartesian",),
}
PRETRAIN_MINUTES = 32.0  # the pool model's cap (models/README.md)
PRETRAIN_OVERHEAD_MINUTES = 2.0
PARTS = ("pretrain-ablation", "table1", "table1-heads", "table1-long", "table1-long-gap", "sparse", "sparse-heads",
         "longpre-sparse", "longpre-table1", "table1-canonical", "ablation", "refine", "variants", "variants-extra",
         "variants-layers")

# parts whose cells the report shows as columns or rows of another part's table
SHOWN_WITH = {"table1-heads": "table1", "variants-extra": "variants", "variants-layers": "variants", "sparse-heads": "sparse",
              "table1-long-gap": "table1-long", "longpre-table1": "longpre-sparse"}

QUICK_BUDGET_MINUTES = 0.15
STEP_CAP_FACTOR = 4.0  # a step-budget job's wall-clock cap, in multiples of the task's budget (a safety limit)
QUICK_PRETRAIN_MINUTES = 0.3
QUICK_OVERHEAD_MINUTES = 0.2
QUICK_FRACTIONS_SPARSE = (0.1, 0.4, 1.0)  # Fig. 4 in reduced form: three of the six fractions


# --- peers: the hook for ALIGNN / CGCNN runners -------------------------------------------------------


@dataclass(frozen=True)
class PeerJob:
    """What a peer runner gets: identical split files and the exact training ids crysdiff uses
    (``train_ids``: the labelled, readable crystals of ``train`` after the seeded label fraction)."""

    train: Path
    val: Path
    test: Path
    target: str
    label_fraction: float
    train_ids: tuple[str, ...]
    seed: int
    budget_minutes: float
    out_dir: Path


# A peer runner returns the test predictions as a DataFrame with columns ``id`` and ``mean`` (and,
# if it has them, ``std``, ``p2.5``, ``p97.5``), ids as in the test file.
PeerRunner = Callable[[PeerJob], "object"]


@dataclass(frozen=True)
class CommandPeer:
    """A peer run as a shell command template; placeholders are :class:`PeerJob` fields (``{train}``,
    ``{val}``, ``{test}``, ``{target}``, ``{label_fraction}``, ``{seed}``, ``{budget_minutes}``,
    ``{out_dir}``) plus ``{train_ids}``, a file with one training id per line. The command writes
    ``{out_dir}/test_predictions.csv`` (``id,mean[,std,p2.5,p97.5]``)."""

    template: str

    def command(self, job: PeerJob) -> str:
        fields = {k: (str(v) if not isinstance(v, tuple) else "") for k, v in asdict(job).items()}
        fields["train_ids"] = str(job.out_dir / "train_ids.txt")
        return self.template.format(**fields)

    def __call__(self, job: PeerJob):
        import pandas as pd

        job.out_dir.mkdir(parents=True, exist_ok=True)
        (job.out_dir / "train_ids.txt").write_text("".join(f"{i}\n" for i in job.train_ids))
        with open(job.out_dir / "peer.log", "w") as log:
            subprocess.run(self.command(job), shell=True, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return pd.read_csv(job.out_dir / "test_predictions.csv", dtype={"id": str})


# Only registered peers get jobs; their budget is the task's, like every other column, and they use
# the same threads (OMP_NUM_THREADS from --threads). See benchmarks/peers/README.md.
_PEER_ARGS = ("--train {train} --val {val} --test {test} --target {target} --minutes {budget_minutes} "
              "--seed {seed} --train-ids {train_ids} --out {out_dir}")
PEERS: dict[str, PeerRunner] = {
    "cgcnn": CommandPeer(f"{sys.executable} -m benchmarks.peers.train_cgcnn {_PEER_ARGS}"),
}
if (ROOT / ".venv-alignn" / "bin" / "python").is_file():  # made by benchmarks/peers/alignn_setup.sh
    PEERS["alignn"] = CommandPeer(f".venv-alignn/bin/python benchmarks/peers/alignn_runner.py {_PEER_ARGS}")


# --- jobs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    experiment: str
    task: str
    model: str
    label_fraction: float
    seed: int
    budget_minutes: float
    init_job: str = ""  # the fine-tuned model this job refines (refined) or tests (dft_only)
    budget_steps: int = 0  # > 0: the budget is this many optimiser steps, budget_minutes only a safety cap

    @property
    def job_id(self) -> str:
        """Names the run, not the experiment: equal settings in two experiments are the same job."""
        budget = ("eval" if self.budget_minutes == 0 else f"b{self.budget_steps}st" if self.budget_steps
                  else f"b{self.budget_minutes:g}m")
        base = f"{self.task}.{self.model}.lf{self.label_fraction:g}.s{self.seed}.{budget}"
        return f"{base}.from-{self.init_job}" if self.init_job else base

    def settings(self) -> dict:
        return asdict(self) | {"job_id": self.job_id}


@dataclass(frozen=True)
class PretrainJob:
    name: str
    overrides: tuple[str, ...]
    budget_minutes: float

    experiment = "pretrain-ablation"

    @property
    def job_id(self) -> str:
        return f"pretrain.{self.name}"


def make_jobs(part: str, *, quick: bool = False, seeds: tuple[int, ...] | None = None,
              budget_minutes: float | None = None, models: tuple[str, ...] | None = None,
              budget_steps: int | None = None) -> list:
    """The jobs of one part, in run order. Deterministic: the same arguments give the same list.

    With a step budget (``budget_steps`` or the experiment's own) every crysdiff job trains that many
    optimiser steps, a budget that means the same on any machine; its wall-clock cap is then
    ``budget_minutes`` when given, else ``STEP_CAP_FACTOR`` times the task's budget, a safety limit only (peers keep
    the wall clock)."""
    if part == "pretrain-ablation":
        minutes = budget_minutes or (QUICK_PRETRAIN_MINUTES if quick else PRETRAIN_MINUTES)
        return [PretrainJob(name, overrides, minutes) for name, overrides in PRETRAININGS.items()
                if not models or name in models]
    experiment = EXPERIMENTS[part]
    run_seeds = tuple(seeds) if seeds else ((0,) if quick else experiment.seeds)
    columns = [m for m in experiment.models] + [p for p in experiment.peers if p in PEERS]

    def budget(task: str) -> float:
        return budget_minutes or (QUICK_BUDGET_MINUTES if quick else experiment.budget_minutes or TASKS[task].budget_minutes)

    jobs: list[Job] = []
    for seed in run_seeds:
        if part == "refine":
            base = Job(part, BASE_REFINE, "crysdiff", 1.0, seed, budget(BASE_REFINE))
            if not models or "crysdiff" in models:
                jobs.append(base)
        for task in (experiment.tasks if experiment.quick_tasks is None else experiment.quick_tasks) if quick else experiment.tasks:
            for fraction in (QUICK_FRACTIONS_SPARSE if quick and part in ("sparse", "sparse-heads") else experiment.fractions):
                for model in columns:
                    if models and model not in models:
                        continue
                    init_job = base.job_id if part == "refine" and MODELS.get(model, Model("")).init == "job" else ""
                    minutes = 0.0 if MODELS.get(model, Model("")).evaluate_only else budget(task)
                    steps = (budget_steps or experiment.budget_steps) if minutes and model in MODELS and not MODELS[model].peer else 0
                    if steps:  # the wall clock is a safety cap only: --budget-minutes sets it, else STEP_CAP_FACTOR x the task's
                        minutes = budget_minutes or STEP_CAP_FACTOR * (QUICK_BUDGET_MINUTES if quick else TASKS[task].budget_minutes)
                    jobs.append(Job(part, task, model, fraction, seed, minutes, init_job, steps))
    return jobs


def estimate_minutes(job, quick: bool = False) -> float:
    """Wall-clock estimate of one job: its budget plus start-up, validation and test prediction."""
    if isinstance(job, PretrainJob):
        return job.budget_minutes + (QUICK_OVERHEAD_MINUTES if quick else PRETRAIN_OVERHEAD_MINUTES)
    model = MODELS.get(job.model, Model(""))
    task = TASKS[job.task]
    overhead = QUICK_OVERHEAD_MINUTES if quick else task.overhead_minutes + model.extra_overhead(task.split)
    return job.budget_minutes + overhead


# --- where things go -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Folders of one mode: results (committed), runs and splits (not committed), ablation models."""

    quick: bool
    results: Path
    runs: Path
    splits: Path
    ablation_models: Path
    pool_model: Path = ROOT / "models" / "pretrained_pool.ckpt"

    @classmethod
    def default(cls, quick: bool = False, root: Path = ROOT) -> "Layout":
        name = "suite-quick" if quick else "suite"
        runs = root / "runs" / name
        ablation = runs / "models" / "ablation" if quick else root / "models" / "ablation"
        return cls(quick, root / "benchmarks" / "results" / name, runs, runs / "splits", ablation,
                   root / "models" / "pretrained_pool.ckpt")

    def result_path(self, job) -> Path:
        return self.results / job.experiment / f"{job.job_id}.json"

    def run_dir(self, job) -> Path:
        return self.runs / "jobs" / job.job_id

    def pretrained(self, name: str) -> Path:
        """``pool``, ``pool_long``, ``pool_long2`` and ``canonical``: the committed pool models (made by
        benchmarks/train_default_models.sh); any other name: an ablation pre-training of the
        ``pretrain-ablation`` part."""
        if name in ("pool_long", "pool_long2"):
            return self.pool_model.with_name(f"pretrained_{name}.ckpt")
        if name == "canonical":
            return self.pool_model.with_name("pretrained_canonical.ckpt")
        return self.pool_model if name == "pool" else self.ablation_models / f"pretrained_{name}.ckpt"


def find_reusable(layout: Layout, job) -> Path | None:
    """A results file of the same job written by another experiment."""
    for path in sorted(layout.results.glob(f"*/{job.job_id}.json")):
        if path.parent.name != job.experiment:
            return path
    return None


def missing_model(layout: Layout, job, needed=frozenset()) -> Path | None:
    """The model file a job must leave for later jobs, when it is gone (``runs/`` cleaned, a fresh
    clone): an ablation pre-training's checkpoint, or the fine-tuned model of a job whose id is in
    ``needed`` (the ``init_job`` s of the jobs being run). ``None`` when nothing is missing."""
    if isinstance(job, PretrainJob):
        target = layout.pretrained(job.name)
    elif job.job_id in needed:
        target = layout.run_dir(job) / "model.ckpt"
    else:
        return None
    return None if target.is_file() else target


def status(layout: Layout, job) -> str:
    if isinstance(job, PretrainJob) and layout.result_path(job).is_file() and missing_model(layout, job):
        return "done, but its checkpoint is gone: pre-trains again"
    if layout.result_path(job).is_file():
        return "done"
    if find_reusable(layout, job):
        return "reusable"
    if isinstance(job, PretrainJob):
        return "resumable" if (layout.runs / "pretrain" / job.name / "checkpoints" / "last.ckpt").is_file() else "pending"
    missing = [p for p in required_models(layout, job) if not p.is_file()]
    if missing and not (job.init_job and missing == [layout.runs / "jobs" / job.init_job / "model.ckpt"]):
        return "blocked: needs " + ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in missing)
    if (layout.run_dir(job) / "checkpoints" / "last.ckpt").is_file():
        return "resumable"
    return "pending"


def required_models(layout: Layout, job: Job) -> list[Path]:
    model = MODELS.get(job.model)
    if model is None or model.peer:
        return []
    out = []
    if model.init == "job":
        out.append(layout.runs / "jobs" / job.init_job / "model.ckpt")
    elif model.init:
        out.append(layout.pretrained(model.init))
    if model.extra_init:
        out.append(layout.pretrained(model.extra_init))
    return out
