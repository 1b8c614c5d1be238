"""The reproduction suite's machinery (benchmarks/suite.py, suite_splits.py, report.py): the job
table, skipping and reusing finished jobs, split files, and the report. Nothing here trains: the
results files below are fabricated test fixtures written to a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report, suite, suite_jobs, suite_splits
from benchmarks.reporting import columns, dropped

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _layout(tmp_path: Path, quick: bool = False) -> suite_jobs.Layout:
    return suite_jobs.Layout(quick, tmp_path / "results", tmp_path / "runs", tmp_path / "runs" / "splits",
                        tmp_path / "models" / "ablation", tmp_path / "models" / "pool.ckpt")


# --- the job table -----------------------------------------------------------------------------------


def test_job_table_is_deterministic_and_complete(monkeypatch):
    # with both peers registered, every part fits the 2-hour limit one seed at a time
    monkeypatch.setattr(suite_jobs, "PEERS", {"alignn": suite_jobs.CommandPeer("x"), "cgcnn": suite_jobs.CommandPeer("x")})
    for part in suite_jobs.PARTS:
        first, second = suite_jobs.make_jobs(part), suite_jobs.make_jobs(part)
        assert first == second and [j.job_id for j in first] == [j.job_id for j in second]
        ids = [j.job_id for j in first]
        assert len(ids) == len(set(ids)), f"{part}: duplicate job ids"
        for seed in {getattr(j, "seed", None) for j in first}:
            minutes = sum(suite_jobs.estimate_minutes(j) for j in first if getattr(j, "seed", None) == seed)
            assert minutes <= suite_jobs.PART_LIMIT_MINUTES, (part, seed, minutes)
    assert len(suite_jobs.make_jobs("table1")) == 7 * 5 * 2
    long = suite_jobs.make_jobs("table1-long")  # a budget of its own, five times the task's
    assert len(long) == 4 and {j.budget_minutes for j in long} == {5 * suite_jobs.TASKS["mp2018_formation"].budget_minutes}
    assert not {j.job_id for j in long} & {j.job_id for j in suite_jobs.make_jobs("table1")}
    assert {j.task for j in suite_jobs.make_jobs("table1-long-gap")} == {"mp2018_band_gap"}
    # the longer pre-training's parts share their all-labels formation-energy job; they start from the committed model
    longpre = suite_jobs.make_jobs("longpre-sparse") + suite_jobs.make_jobs("longpre-table1")
    assert len(longpre) == 2 * (2 * 6 + 7) and len({j.job_id for j in longpre}) == 2 * (2 * 6 + 7 - 2)
    for name in ("pool_long", "pool_long2"):
        assert suite_jobs.Layout.default().pretrained(name) == suite_jobs.ROOT / "models" / f"pretrained_{name}.ckpt"
    monkeypatch.setattr(suite_jobs, "PEERS", {})
    assert len(suite_jobs.make_jobs("table1")) == 7 * 3 * 2
    assert len(suite_jobs.make_jobs("sparse")) == 2 * 6 * 2
    quick = suite_jobs.make_jobs("table1", quick=True)
    assert {j.seed for j in quick} == {0} and {j.budget_minutes for j in quick} == {suite_jobs.QUICK_BUDGET_MINUTES}
    # every job once: a job listed by several parts (same task, model, fraction, seed, budget) runs once
    unique = {j.job_id: j for p in suite_jobs.PARTS for j in suite_jobs.make_jobs(p, quick=True)}
    assert sum(suite_jobs.estimate_minutes(j, True) for j in unique.values()) <= 30
    monkeypatch.setattr(suite_jobs, "PEERS", {"alignn": suite_jobs.CommandPeer("x"), "cgcnn": suite_jobs.CommandPeer("x")})
    unique = {j.job_id: j for p in suite_jobs.PARTS for j in suite_jobs.make_jobs(p, quick=True)}
    assert sum(suite_jobs.estimate_minutes(j, True) for j in unique.values()) <= 30  # with both peers too
    # refinement starts from the mp2018 model of its seed, which comes earlier in the part
    refine = suite_jobs.make_jobs("refine", seeds=(3,))
    ids = [j.job_id for j in refine]
    for k, job in enumerate(refine):
        if job.init_job:
            assert job.init_job in ids[:k] and ".s3." in job.init_job
    # same settings in two experiments: the same job (run folder and results shared)
    shared = {j.job_id for j in suite_jobs.make_jobs("table1")} & {j.job_id for j in suite_jobs.make_jobs("sparse")}
    assert "mp2018_formation.crysdiff.lf1.s0.b4m" in shared
    assert suite_jobs.make_jobs("variants", seeds=(5,), budget_minutes=2)[0].job_id.endswith(".s5.b2m")


def test_command_line_filters_select_tasks_models_and_fractions():
    args = suite.argparse.Namespace(quick=False, seeds=[1], budget_minutes=None, models=["crysdiff", "cgcnn"],
                                    fractions=None, tasks=["perov5_heat", "mp_elastic_bulk"], limit=None)
    picked = {(j.task, j.model, j.seed) for j in suite.select_jobs(["table1"], args)}
    assert picked == {(t, m, 1) for t in args.tasks for m in args.models}
    args.models = None
    jobs = suite.select_jobs(["pretrain-ablation", "ablation"], args)
    assert sum(not hasattr(j, "task") for j in jobs) == 3  # pre-trainings have no task and stay
    assert {j.task for j in jobs if hasattr(j, "task")} == {"mp_elastic_bulk"}  # the ablation has no perov5_heat
    args.tasks = ["perov5_heat", "no_such_task"]
    with pytest.raises(SystemExit, match="no_such_task"):
        suite.select_jobs(["table1"], args)


def test_commands_pass_split_budget_and_variant(tmp_path):
    layout = _layout(tmp_path)
    split = suite_splits.SplitFiles("x", tmp_path, tmp_path / "train.csv.gz", tmp_path / "val.csv.gz", tmp_path / "test.csv.gz")
    job = suite_jobs.Job("ablation", "mp_elastic_bulk", "no_jd", 0.2, 1, 1.5)
    command = suite.finetune_command(layout, job, split)
    text = " ".join(command)
    assert f"--init {layout.pretrained('lattice')}" in text and f"extra_init={layout.pretrained('coords')}" in text
    assert "--val " + str(split.val) in text and "--target K_VRH" in text and "--label-fraction 0.2" in text
    assert "train.max_time_minutes=1.5" in command and "--seed" in command and "--resume" not in command
    scratch = suite.finetune_command(layout, suite_jobs.Job("table1", "mp2018_band_gap", "scratch", 1.0, 0, 4), split, resume=True)
    assert "--init" not in scratch and "--resume" in scratch
    assert suite.shown(command).startswith("crysdiff finetune ")


# --- skipping, reusing ---------------------------------------------------------------------------------


def test_finished_jobs_are_skipped_and_identical_jobs_reused(tmp_path, monkeypatch):
    layout = _layout(tmp_path)
    runner = suite.Runner(layout, log=lambda message: None)
    monkeypatch.setattr(suite.Runner, "_crysdiff", lambda self, job: pytest.fail(f"{job.job_id} should not run"))
    job = suite_jobs.Job("table1", "mp2018_formation", "crysdiff", 1.0, 0, 4.0)
    layout.result_path(job).parent.mkdir(parents=True)
    layout.result_path(job).write_text(json.dumps({"experiment": "table1", "test": {"mae": 0.1}}))
    assert suite_jobs.status(layout, job) == "done"
    assert runner.run_job(job).startswith("skipped")
    twin = suite_jobs.Job("sparse", "mp2018_formation", "crysdiff", 1.0, 0, 4.0)
    assert suite_jobs.status(layout, twin) == "reusable"
    assert runner.run([twin]) == []
    copied = json.loads(layout.result_path(twin).read_text())
    assert copied["experiment"] == "sparse" and copied["reused_from"].startswith("table1/")
    # an interrupted run folder is resumed, a missing ablation checkpoint blocks
    other = suite_jobs.Job("table1", "mp2018_formation", "scratch", 1.0, 0, 4.0)
    (layout.run_dir(other) / "checkpoints").mkdir(parents=True)
    (layout.run_dir(other) / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert suite_jobs.status(layout, other) == "resumable"
    assert suite_jobs.status(layout, suite_jobs.Job("ablation", "mp2018_formation", "no_egnn", 1.0, 0, 4.0)).startswith("blocked")


def test_done_jobs_whose_models_are_gone_are_trained_again(tmp_path, monkeypatch):
    """A fresh clone has the committed results but not runs/: an ablation pre-training whose checkpoint
    is gone, and the refine part's base model, are made again; other done jobs stay skipped."""
    layout = _layout(tmp_path)
    trained = []
    monkeypatch.setattr(suite.Runner, "_crysdiff", lambda self, job: trained.append(job.job_id) or "trained")
    monkeypatch.setattr(suite.Runner, "_pretrain", lambda self, job: trained.append(job.job_id) or "pre-trained")
    refine = suite_jobs.make_jobs("refine", seeds=(0,))
    base, first_user = refine[0], refine[1]
    assert first_user.init_job == base.job_id
    pretrain = suite_jobs.make_jobs("pretrain-ablation")[0]
    plain = suite_jobs.Job("table1", "mp2018_band_gap", "crysdiff", 1.0, 0, 4.0)
    for job in (base, pretrain, plain):
        layout.result_path(job).parent.mkdir(parents=True, exist_ok=True)
        layout.result_path(job).write_text(json.dumps({"experiment": job.experiment}))
    assert suite_jobs.status(layout, pretrain).startswith("done, but its checkpoint is gone")
    runner = suite.Runner(layout, log=lambda message: None)
    runner.run([pretrain, plain, base, first_user])
    assert trained == [pretrain.job_id, base.job_id, first_user.job_id]
    # with the models present nothing done runs again
    layout.pretrained(pretrain.name).parent.mkdir(parents=True, exist_ok=True)
    layout.pretrained(pretrain.name).write_bytes(b"")
    (layout.run_dir(base)).mkdir(parents=True, exist_ok=True)
    (layout.run_dir(base) / "model.ckpt").write_bytes(b"")
    trained.clear()
    runner.run([pretrain, plain, base])
    assert trained == []


def test_rerun_moves_every_copy_of_a_jobs_outputs_aside_and_runs_it_again(tmp_path, monkeypatch):
    """--rerun: the job's results file, the copy another part reused, its run folder and an ablation
    checkpoint move under runs/superseded/<stamp>/ (nothing deleted); other jobs are untouched."""
    layout = _layout(tmp_path)
    job = suite_jobs.Job("table1", "mp2018_formation", "crysdiff", 1.0, 0, 4.0)
    twin = suite_jobs.Job("variants", "mp2018_formation", "crysdiff", 1.0, 0, 4.0)
    other = suite_jobs.Job("table1", "mp2018_formation", "scratch", 1.0, 0, 4.0)
    pretrain = suite_jobs.make_jobs("pretrain-ablation")[0]
    for j in (job, twin, other, pretrain):
        layout.result_path(j).parent.mkdir(parents=True, exist_ok=True)
        layout.result_path(j).write_text(json.dumps({"experiment": j.experiment, "job": j.job_id}))
    layout.run_dir(job).mkdir(parents=True)
    (layout.run_dir(job) / "model.ckpt").write_bytes(b"old model")
    layout.pretrained(pretrain.name).parent.mkdir(parents=True)
    layout.pretrained(pretrain.name).write_bytes(b"old pre-training")
    folder, moved = suite.supersede(layout, [job, pretrain], stamp="T0")
    assert folder == layout.runs / "superseded" / "T0" and moved == 5
    assert (folder / "results" / "table1" / f"{job.job_id}.json").is_file()
    assert (folder / "results" / "variants" / f"{job.job_id}.json").is_file()
    assert (folder / "jobs" / job.job_id / "model.ckpt").read_bytes() == b"old model"
    assert (folder / "models" / layout.pretrained(pretrain.name).name).read_bytes() == b"old pre-training"
    for j in (job, twin, pretrain):
        assert suite_jobs.status(layout, j) not in ("done", "reusable"), j
    assert suite_jobs.status(layout, other) == "done"
    # through the command line: the selected job runs again, the others stay skipped
    trained = []
    monkeypatch.setattr(suite.Runner, "_crysdiff", lambda self, j: trained.append(j.job_id) or "trained")
    monkeypatch.setattr(suite.Layout, "default", classmethod(lambda cls, quick=False: layout))
    layout.result_path(job).write_text(json.dumps({"experiment": "table1"}))
    args = ["--part", "table1", "--seeds", "0", "--models", "crysdiff", "scratch", "--fractions", "1"]
    suite.main(args + ["--limit", "2"])
    assert trained == []  # both done: skipped
    suite.main(args + ["--limit", "2", "--rerun"])
    assert sorted(trained) == sorted([job.job_id, other.job_id])
    assert len(list((layout.runs / "superseded").iterdir())) == 2


# --- split files ---------------------------------------------------------------------------------------


def test_split_files_are_deterministic_disjoint_and_readable(tmp_path, shared_data):
    source = suite_splits.ExtxyzFrames(shared_data / "matminer" / "dielectric_constant.extxyz")
    first = suite_splits.seeded_split("dielectric", source, tmp_path / "a", quick=False)
    second = suite_splits.seeded_split("dielectric", suite_splits.ExtxyzFrames(source.path), tmp_path / "b", quick=False)
    a, b = first.info()["parts"], second.info()["parts"]
    assert {k: v["sha256"] for k, v in a.items()} == {k: v["sha256"] for k, v in b.items()}
    positions = [set(a[p]["positions"]) for p in ("train", "val", "test")]
    assert not (positions[0] & positions[1] or positions[0] & positions[2] or positions[1] & positions[2])
    assert set().union(*positions) == set(range(len(source.ids())))
    assert [a[p]["count"] for p in ("train", "val", "test")] == [810, 101, 101]
    quick = suite_splits.seeded_split("dielectric", source, tmp_path / "q", quick=True).info()["parts"]
    for part in ("train", "val", "test"):
        assert set(quick[part]["positions"]) <= set(a[part]["positions"])
    # a CSV split (perov_5: train on val, test on test), as crysdiff reads it
    from crysdiff.cache import load_dataset

    perov = suite_splits.holdout_split("perov_5", suite_splits.CsvTable(shared_data / "perov_5" / "val.csv.gz"),
                                       suite_splits.CsvTable(shared_data / "perov_5" / "test.csv.gz"), tmp_path / "c",
                                       quick=True, val_fraction=0.1)
    info = perov.info()["parts"]
    assert not set(info["train"]["ids"]) & set(info["val"]["ids"])
    cache = load_dataset([str(perov.val)], progress=False, workers=1)
    assert [cache.id(i) for i in range(len(cache))] == info["val"]["ids"]
    assert "heat_ref" in cache.label_names and "Unnamed: 0" not in cache.label_names


# --- the report ------------------------------------------------------------------------------------


def _fixture(results: Path, experiment: str, task: str, model: str, seed: int, mae: float, fraction: float = 1.0,
             coverage: float | None = 0.95, budget: float = 1.5, cpu: str = "test cpu", steps: int = 0, **extra) -> None:
    """A fabricated results file (a test fixture, shaped like the suite's)."""
    test = {"count": 100, "mae": mae, "rmse": 1.3 * mae, "r2": 0.9}
    if coverage is not None:
        test |= {"coverage95": coverage, "std_bins": [{"count": 50, "mean_predicted_std": s, "rmse": 1.1 * s} for s in (0.1, 0.2)]}
    payload = {
        "schema": 1, "experiment": experiment, "task": task, "model": model, "label_fraction": fraction, "seed": seed,
        "budget_minutes": budget, "init_job": "", "job_id": f"{task}.{model}.lf{fraction:g}.s{seed}" + (f".b{steps}st" if steps else ""), "quick": False,
        "target": suite_jobs.TASKS[task].target, "unit": "GPa",
        "split": {"name": "mp_elastic", "seed": 0, "parts": {p: {"count": n, "file": "x", "sha256": "0"}
                                                            for p, n in (("train", 80), ("val", 10), ("test", 10))}},
        "git_commit": "0" * 40, "budget_steps": steps, "machine": {"cpu": cpu, "cores": 2, "torch": "x", "torch_threads": 1, "gpu": "none"},
        "commands": [f"crysdiff finetune --target {suite_jobs.TASKS[task].target} ({model})"], "seconds": {"total": 60.0},
        "train_count": int(800 * fraction), "test": test, "fit": {"steps": 900, "epochs": round(24 / fraction), "seconds": 90.0},
    } | extra
    path = results / experiment / f"{payload['job_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_report_renders_tables_figures_and_peer_columns(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        for task, base in (("mp_elastic_bulk", 10.0), ("dielectric_n", 0.3)):
            _fixture(results, "table1", task, "crysdiff", seed, base * (0.8 + 0.01 * seed))
            _fixture(results, "table1", task, "scratch", seed, base * (1.0 + 0.01 * seed))
            _fixture(results, "table1", task, "regression", seed, base * 0.9, coverage=None)
        _fixture(results, "table1", "mp_elastic_bulk", "alignn", seed, 7.0, coverage=None)  # a peer column
    for fraction in (0.05, 0.4, 1.0):
        _fixture(results, "sparse", "mp_elastic_bulk", "crysdiff", 0, 10 / fraction**0.2, fraction)
        _fixture(results, "sparse", "mp_elastic_bulk", "scratch", 0, 12 / fraction**0.2, fraction)
        _fixture(results, "sparse", "mp_elastic_bulk", "alignn", 0, 11.0, fraction, coverage=None)
    for variant, mae in (("crysdiff", 10.0), ("no_jd", 11.0), ("no_ue", 9.5)):
        _fixture(results, "ablation", "mp_elastic_bulk", variant, 0, mae)
    out = tmp_path / "docs" / "results.md"
    text = report.render(results, out, tmp_path / "docs" / "figures")
    assert out.read_text() == text and "generated by `python benchmarks/report.py`" in text
    assert "alignn (peer)" in text and "**7 ± 0" in text  # the peer is best on bulk modulus, in bold
    assert "crysdiff (the paper's CARD head, constant prior) is the best column on 1 of 2 tasks" in text
    assert "lowers the test MAE on 2 of 2 tasks" in text
    assert "pre-trained beats scratch at 2 of 2 fractions up to 40%" in text
    assert "crysdiff's 95% interval coverage (the chain's own), by fraction: 5% 0.95, 40% 0.95, 100% 0.95" in text
    assert "optimizer steps (epochs started) within the budget, by fraction: 5% 900 (480), 40% 900 (60), 100% 900 (24)" in text
    assert "against alignn (peer): crysdiff is better at 1 of 3 fractions (changes: 5% +66%, 40% +9.2%, 100% -9.1%)" in text
    assert "w/o updating the encoder: worse than the full model on 0 of 1" in text
    assert "*No refine results yet*" in text
    for figure in ("fig4_sparse.png", "fig5_ablation.png", "reliability.png"):
        assert (tmp_path / "docs" / "figures" / figure).stat().st_size > 1000
        assert f"figures/{figure}" in text


def test_report_compares_sparse_cells_on_matched_seeds_and_shows_ensembles(tmp_path):
    """Extra crysdiff seeds (run for the ensemble) do not enter the Fig. 4 comparison, which uses the
    seeds every model has; the ensemble file of benchmarks/ensemble.py gets its own table."""
    results = tmp_path / "results"
    for fraction in (0.05, 0.4):
        _fixture(results, "sparse", "mp_elastic_bulk", "crysdiff", 0, 10.0, fraction, coverage=0.5)
        _fixture(results, "sparse", "mp_elastic_bulk", "scratch", 0, 12.0, fraction)
    _fixture(results, "sparse", "mp_elastic_bulk", "crysdiff", 1, 100.0, 0.05, coverage=0.7)  # would flip the 5% cell
    cells = report.matched_seeds(report.aggregate(report.load_results(results)[0]), "sparse")
    assert cells[("sparse", "mp_elastic_bulk", "crysdiff", 0.05)].maes == [10.0]
    assert cells[("sparse", "mp_elastic_bulk", "crysdiff", 0.05)].coverages == [0.5]
    member = {"mae": 10.0, "rmse": 13.0, "coverage95": 0.5, "mean_predicted_std": 2.0, "spearman_std_vs_abs_error": 0.3,
              "coverage_by_level": {"0.95": 0.5}}
    ensemble = {**member, "mae": 9.0, "coverage95": 0.91, "mean_predicted_std": 5.0, "std_models": 4.0, "pooling": "widened"}
    as_drawn = {**ensemble, "coverage95": 0.83, "mean_predicted_std": 4.0, "pooling": "as drawn"}
    (results / "ensemble").mkdir()
    (results / "ensemble" / "mp_elastic_bulk.json").write_text(json.dumps({
        "task": "mp_elastic_bulk", "target": "K_VRH", "unit": "GPa", "samples_per_model": 100, "seeds": [0, 1],
        "command": "python benchmarks/ensemble.py --seeds 0 1", "git_commit": "a" * 40, "quick": False,
        "rows": [{"label_fraction": 0.05, "train_count": 40, "test_count": 10, "seconds": 1.0, "ensemble": ensemble,
                  "ensemble_as_drawn": as_drawn, "members": [member | {"seed": 0}, member | {"seed": 1, "mae": 12.0, "coverage95": 0.7}]}]}))
    text = report.render(results, tmp_path / "results.md", tmp_path / "figures")
    assert "pre-trained beats scratch at 2 of 2 fractions up to 40%" in text
    assert "seeds that only some models have (1) are left out here" in text
    assert "| bulk modulus (mp_elastic) | 5% (40) | 10 | 11 | 0.6 | 2 | 9 | 0.91 | 5 | 0.83 | 4 |" in text
    assert ("5%: coverage 0.6 alone, 0.91 with 2 models (0.83 pooled as drawn) (inside [0.90, 0.98]); MAE -18% against "
            "the mean single model.") in text


def test_removed_options_leave_the_tables_and_keep_their_numbers_in_tried_and_dropped(tmp_path):
    """Runs of an option removed from the code (issue 23) leave every table and the calibration rows;
    the "Tried and dropped" section sets each beside the same job without the option: by the overrides
    its results file records, else the job table's, and for an archived default by the same column."""
    results = tmp_path / "results"
    for model, mae in (("crysdiff", 0.4), ("regression", 0.24)):
        _fixture(results, "variants", "mp2018_formation", model, 0, mae, budget=4.0)
    settings = {"init": "pool", "overrides": ["head.kind=regression", "head.composition=true"]}
    _fixture(results, "variants-extra", "mp2018_formation", "regression_composition", 0, 0.18, budget=4.0, coverage=None,
             model_settings=settings, model_label="regression head + composition skip")
    _fixture(results, "variants-layers", "mp2018_formation", "gaussian_learned_longpre2_layers", 0, 0.3, budget=4.0)
    archive = results / "archive" / "card-baseline-zero"
    _fixture(archive, "table1", "mp_elastic_bulk", "crysdiff", 0, 10.0, coverage=0.9)
    _fixture(archive, "table1", "mp_elastic_bulk", "crysdiff", 1, 10.0)  # no current seed-1 row: a dash beside it
    for path in (archive / "table1").glob("*.json"):  # the suite's archive holds the files flat
        path.rename(archive / path.name)
    _fixture(results, "table1", "mp_elastic_bulk", "crysdiff", 0, 8.0, coverage=0.93)
    (results / "calibration").mkdir()
    rows = [{"experiment": e, "task": "mp2018_formation", "model": m, "label_fraction": 1.0, "seed": 0, "interval_scale": 1.0,
             "test_coverage_raw": 0.9, "test_coverage_calibrated": 0.95, "git_commit": "c" * 40}
            for e, m in (("variants", "crysdiff"), ("variants-extra", "regression_composition"))]
    (results / "calibration" / "runs.json").write_text(json.dumps({"rows": rows, "command": "c", "git_commit": "c" * 40}))
    text = report.render(results, tmp_path / "results.md", tmp_path / "figures")
    tables, rest = text.split("## Tried and dropped")
    tried, calibration = rest.split("## Calibrated intervals")
    tables += calibration
    assert "composition skip" not in tables and "head reads all layers" not in tables
    assert "regression_composition" not in "".join(str(k) for k in report.load_calibration(results))
    assert "| variants | formation energy (mp2018) | " in calibration  # the kept row of the calibration table
    assert ("| formation energy (mp2018) | regression head + composition skip | 100% | 0 | 0.18 | 0.24 | -25% | – | 900 | "
            "`0000000` |") in tried
    assert "| formation energy (mp2018) | crysdiff, longer pre-training still, head reads all layers" in tried
    assert "| 0.3 | – | – |" in tried  # its partner (the same head on the last layer) is not in these results
    assert "--part variants-extra --seeds 0 --models regression_composition" in tried
    baseline = tried.split("### `head.baseline=zero`")[1].split("###")[0]
    assert "| bulk modulus (mp_elastic) | crysdiff (pre-trained + CARD head, constant prior) | 100% | 0 | 10 | 8 | +25% |" in baseline
    assert "| 1 | 10 | – | – |" in baseline
    assert "With the option the test MAE is lower on 0 of 1 rows" in baseline
    assert "in no suite part and no results file" in tried  # card_mlp: measured nowhere, and said so
    assert "anneal_over_time" not in tried  # kept: the shipped models' recipe runs with it (docs/training.md)
    assert all(f"### `{d.option}`" in tried for d in dropped.DROPPED)
    # archived files do not enter the current tables
    assert report.aggregate(report.load_results(results)[0])[("table1", "mp_elastic_bulk", "crysdiff", 1.0)].maes == [8.0]


def test_report_starts_as_a_script_from_any_folder_and_as_a_module():
    """``python benchmarks/report.py`` (what the docs cite) and ``python -m benchmarks.report`` both
    import every section and take the same flags."""
    root = Path(report.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    for how, cwd in (([str(root / "benchmarks" / "report.py")], root.parent), (["-m", "benchmarks.report"], root)):
        done = subprocess.run([sys.executable, *how, "--help"], cwd=cwd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert all(flag in done.stdout for flag in ("--quick", "--results", "--out", "--figures"))


def test_every_column_the_report_names_is_in_the_job_table():
    """The report takes its experiment and column names from benchmarks/suite_jobs.py."""
    assert columns.PAPER_COLUMN in suite_jobs.MODELS and set(columns.LONGPRE_BASE) <= set(suite_jobs.MODELS)
    assert [own for own, _, _ in columns.crysdiff_heads()] == ["crysdiff", "gaussian_learned"]
    assert set(suite_jobs.SHOWN_WITH) | set(suite_jobs.SHOWN_WITH.values()) <= set(suite_jobs.EXPERIMENTS)
    assert not set(columns.own_columns()) & dropped.dropped_models([])


def test_report_updates_the_readme_headline_between_markers(tmp_path):
    results = tmp_path / "results"
    for model, mae in (("crysdiff", 8.0), ("scratch", 10.0)):
        _fixture(results, "table1", "mp_elastic_bulk", model, 0, mae)
    table = report.section_table1(report.aggregate(report.load_results(results)[0]))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{report.README_BEGIN}\nold numbers\n{report.README_END}\nafter\n")
    assert report.update_readme(readme, table)
    text = readme.read_text()
    assert "old numbers" not in text and "**8" in text  # crysdiff, the best column, in bold
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{report.README_END}\nafter\n")
    assert "| bulk modulus (mp_elastic) (GPa) |" in text and "docs/results.md" in text
    assert report.update_readme(readme, table) and readme.read_text() == text  # idempotent
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("no markers\n")
    assert not report.update_readme(unmarked, table) and unmarked.read_text() == "no markers\n"


def test_report_shows_the_second_head_as_table1_columns(tmp_path):
    """The ``table1-heads`` part's rows (the Gaussian head with a learned prior and its scratch twin)
    are Table 1 columns, counted per head in the analysis."""
    results = tmp_path / "results"
    for task, scale in (("mp_elastic_bulk", 10.0), ("dielectric_n", 0.3), ("perov5_heat", 0.1)):
        _fixture(results, "table1", task, "crysdiff", 0, 1.0 * scale)
        _fixture(results, "table1", task, "scratch", 0, 1.1 * scale)
        _fixture(results, "table1", task, "regression", 0, 0.9 * scale, coverage=None)
    for task, crys, scratch in (("mp_elastic_bulk", 8.0, 9.0), ("dielectric_n", 0.35, 0.32)):
        _fixture(results, "table1-heads", task, "gaussian_learned", 0, crys, coverage=0.96)
        _fixture(results, "table1-heads", task, "scratch_gaussian_learned", 0, scratch, coverage=0.5)
    table = "\n".join(report.section_table1(report.aggregate(report.load_results(results)[0])))
    assert "crysdiff (pre-trained + Gaussian head, learned prior)" in table and "| **8** |" in table
    assert "crysdiff (the paper's CARD head, constant prior) is the best column on 0 of 3 tasks" in table
    assert "crysdiff (Gaussian head, learned prior) is the best column on 1 of 3 tasks" in table
    assert "One of crysdiff's diffusion heads is the best column on 1 of 3 tasks" in table
    assert "Pre-training (Gaussian head, learned prior: pre-trained vs. the same network from scratch) lowers the " \
           "test MAE on 1 of 2 tasks" in table
    assert "coverage of crysdiff (Gaussian head, learned prior), the chain's own interval, is within [0.90, 0.98] on 2 of 2 tasks" in table


def test_report_sets_the_longer_budget_beside_table1(tmp_path):
    """The ``table1-long`` parts: each model's seed-0 MAE at Table 1's budget and at the longer one,
    the change, and the ranking at each budget (a seed the long part lacks is left out)."""
    results = tmp_path / "results"
    for model, short, long in (("gaussian_learned", 0.26, 0.12), ("scratch_gaussian_learned", 0.22, 0.13),
                               ("cgcnn", 0.21, 0.15)):
        for seed in (0, 1):
            _fixture(results, "table1" if model == "cgcnn" else "table1-heads", "mp2018_formation", model, seed,
                     short + 0.1 * seed, budget=4.0)
        _fixture(results, "table1-long", "mp2018_formation", model, 0, long, budget=20.0)
    _fixture(results, "table1-long-gap", "mp2018_band_gap", "cgcnn", 0, 0.5, budget=20.0)
    cells = report.aggregate(report.load_results(results)[0])
    text = "\n".join(report.section_long(cells))
    assert "| 4 min | 20 min | change |" in text
    assert "| crysdiff (pre-trained + Gaussian head, learned prior) | 0.26 (900 steps) | 0.12 (900 steps) | -54% |" in text
    assert ("formation energy (mp2018), 4 min: ranking cgcnn (peer) 0.21 < same network from scratch (Gaussian head, "
            "learned prior) 0.22 < crysdiff (pre-trained + Gaussian head, learned prior) 0.26; the last is +24% behind "
            "the first.") in text
    assert "formation energy (mp2018), 20 min: ranking crysdiff (pre-trained + Gaussian head, learned prior) 0.12 <" in text
    assert "pre-trained vs. from scratch (Gaussian head, learned prior): 4 min +18%; 20 min -7.7%." in text
    assert "**band gap (mp2018)**" in text and "| cgcnn (peer) | – | 0.5 (900 steps) | – |" in text  # no 4-minute run: a dash
    assert text.count("| 4 min | 20 min | change |") == 2
    assert report.section_long(report.aggregate([])) == []


def test_report_sets_the_longer_pretrainings_beside_the_pool_model_and_scratch(tmp_path):
    """The ``longpre`` parts: each row pairs each longer pre-training's seed-0 MAE with the same head from
    the pool model and from scratch, taken from Fig. 4's runs where they have the fraction, else from
    Table 1's; a run one pre-training lacks shows a dash; the tallies and the Table 1 best-column count
    follow from those numbers, per pre-training."""
    results = tmp_path / "results"
    for fraction, longer, still, pool, scratch in ((0.05, 30.0, 29.0, 32.0, 35.0), (0.4, 15.0, 13.0, 16.0, 14.0),
                                                   (1.0, 12.0, 12.6, 13.0, 12.5)):
        _fixture(results, "longpre-sparse", "mp_elastic_bulk", "gaussian_learned_longpre", 0, longer, fraction)
        _fixture(results, "longpre-sparse", "mp_elastic_bulk", "gaussian_learned_longpre2", 0, still, fraction)
        _fixture(results, "sparse-heads", "mp_elastic_bulk", "gaussian_learned", 0, pool, fraction)
        _fixture(results, "sparse-heads", "mp_elastic_bulk", "scratch_gaussian_learned", 0, scratch, fraction)
        _fixture(results, "sparse-heads", "mp_elastic_bulk", "scratch_gaussian_learned", 1, 99.0, fraction)  # not seed 0
    _fixture(results, "longpre-table1", "dielectric_n", "gaussian_learned_longpre", 0, 0.25)  # no run from the longest
    for model, mae in (("gaussian_learned", 0.27), ("scratch_gaussian_learned", 0.26), ("cgcnn", 0.2)):
        _fixture(results, "table1-heads" if model != "cgcnn" else "table1", "dielectric_n", model, 0, mae)
    for model, mae in (("gaussian_learned", 13.0), ("regression", 12.3)):  # Table 1's bulk row, seed 0
        _fixture(results, "table1-heads" if model != "regression" else "table1", "mp_elastic_bulk", model, 0, mae)
    cells = report.aggregate(report.load_results(results)[0])
    calibration = {("longpre-sparse", "dielectric_n", "gaussian_learned_longpre", 1.0):
                   [{"seed": 0, "test_coverage_raw": 0.9, "test_coverage_calibrated": 0.95, "git_commit": "c" * 40},
                    {"seed": 1, "test_coverage_raw": 0.5, "test_coverage_calibrated": 0.5, "git_commit": "c" * 40}]}  # seed 1: not in the table
    text = "\n".join(report.section_longpre(cells, calibration))
    assert "`models/pretrained_pool_long.ckpt` (longer) and `models/pretrained_pool_long2.ckpt` (longer still)" in text
    assert "| pre-trained longer | pre-trained longer still | longer vs. pool model | longer vs. scratch | " \
           "longer still vs. pool model | longer still vs. scratch | coverage, longer / longer still" in text
    assert "| bulk modulus (mp_elastic) (GPa) | 5% | 35 | 32 | 30 | 29 | -6.2% | -14% | -9.4% | -17% | – / – |" in text
    assert "| bulk modulus (mp_elastic) (GPa) | 40% | 14 | 16 | 15 | 13 | -6.2% | +7.1% | -19% | -7.1% | – / – |" in text
    assert ("| refractive index (matminer dielectric) (GPa) | 100% | 0.26 | 0.27 | 0.25 | – | -7.4% | -3.8% | – | – "
            "| 0.9 → 0.95 / – |") in text
    assert "Pre-trained longer vs. the pool model: lower test MAE in 4 of 4 rows" in text
    assert "Pre-trained longer vs. from scratch: lower test MAE in 3 of 4 rows" in text
    assert "Pre-trained longer still vs. the pool model: lower test MAE in 3 of 3 rows" in text
    assert "Pre-trained longer still vs. from scratch: lower test MAE in 2 of 3 rows" in text
    assert "Pre-trained longer still vs. longer: lower test MAE in 2 of 3 rows" in text
    assert "The pool model vs. from scratch (the same rows, for reference): lower test MAE in 1 of 4 rows" in text
    assert "bulk modulus (mp_elastic): pre-trained longer beats scratch at 1 of 2 fractions up to 40%" in text
    assert "bulk modulus (mp_elastic): pre-trained longer still beats scratch at 2 of 2 fractions up to 40%" in text
    # bulk: 12.0 beats Table 1's 13.0 and 12.3, 12.6 does not; refractive index: 0.25 loses to cgcnn's 0.2
    assert "pre-trained longer would be the best column on 1 of 2 tasks (bulk modulus (mp_elastic))." in text
    assert "pre-trained longer still would be the best column on 0 of 1 tasks." in text
    assert text.index("| 5% |") < text.index("| 40% |") < text.index("refractive index (matminer dielectric) (GPa) | 100%")
    assert "mean over the same seeds" not in text  # one seed each so far
    assert report.section_longpre(report.aggregate([])) == []
    # a second seed of the longest pre-training's Table 1 row: set against Table 1's means over seeds 0 and 1
    _fixture(results, "longpre-table1", "mp_elastic_bulk", "gaussian_learned_longpre2", 1, 11.4)  # mean 12.0
    _fixture(results, "table1-heads", "mp_elastic_bulk", "gaussian_learned", 1, 13.4)  # mean 13.2
    _fixture(results, "table1", "mp_elastic_bulk", "regression", 1, 12.1)  # mean 12.2: the best other column
    text = "\n".join(report.section_longpre(report.aggregate(report.load_results(results)[0])))
    assert ("* Against every Table 1 column, mean over the same seeds (0, 1): pre-trained longer still would be the best "
            "column on 1 of 1 tasks (bulk modulus (mp_elastic)) (issue 5 target: at least 5 of 7):") in text
    assert (f"  * bulk modulus (mp_elastic): 12 ± 0.85 (2) vs. the best other column, {report.model_label('regression')}, "
            "12.2 (-1.6%).") in text
    assert "| bulk modulus (mp_elastic) (GPa) | 100% | 12.5 | 13 | 12 | 12.6 |" in text  # the rows stay seed 0
    assert "mean over the seeds both have" not in text  # the sparse rows still have seed 0 alone
    # a second seed of the longest pre-training at 5% and 40%: Fig. 4's check on the means over seeds 0 and 1
    # (scratch's seed 1 is 99, so both fractions win; 100%, with seeds 0 and 1 from Table 1's runs, is above 40%)
    for fraction, mae in ((0.05, 31.0), (0.4, 15.0)):
        _fixture(results, "longpre-sparse", "mp_elastic_bulk", "gaussian_learned_longpre2", 1, mae, fraction)
    text = "\n".join(report.section_longpre(report.aggregate(report.load_results(results)[0])))
    assert ("* bulk modulus (mp_elastic), mean over the seeds both have on one machine type: pre-trained longer still beats scratch at 2 of 2 "
            "fractions up to 40% (issue 5 target: all): 5% 30 vs. 67 (-55%, seeds 0, 1); 40% 14 vs. 56.5 (-75%, "
            "seeds 0, 1).") in text
    assert "pre-trained longer beats scratch at 1 of 2 fractions up to 40%" in text  # seed 0 lines unchanged


def test_calibration_moves_test_intervals_by_the_scale_fitted_on_validation(tmp_path, monkeypatch):
    """benchmarks/calibration.py: the scale comes from the run's validation predictions and moves the
    test intervals about their means (clipped at the lower bound), as crysdiff predict does."""
    import numpy as np
    import pandas as pd

    from benchmarks import calibration

    rng = np.random.default_rng(0)
    n = 400
    mean = rng.uniform(1, 5, n)
    y = mean + 2.0 * rng.normal(size=n)  # the intervals below assume spread 1: too narrow by 2
    pd.DataFrame({"id": range(n), "y": y, "mean": mean, "std": 1.0, "p2.5": mean - 1.96, "p97.5": mean + 1.96}).to_csv(
        tmp_path / "val_predictions.csv", index=False)
    test_mean = rng.uniform(1, 5, n)
    test_y = test_mean + 2.0 * rng.normal(size=n)
    pd.DataFrame({"id": [f"t{i}" for i in range(n)], "mean": test_mean, "std": 1.0, "p2.5": test_mean - 1.96,
                  "p97.5": test_mean + 1.96}).to_csv(tmp_path / "test_predictions.csv", index=False)
    monkeypatch.setattr(calibration, "test_labels", lambda path, target: {f"t{i}": v for i, v in enumerate(test_y)})
    scored = calibration.calibrate_run(tmp_path, tmp_path / "test.csv", "y", lower_bound=None)
    assert scored["interval_scale"] == pytest.approx(2.0, rel=0.1)
    assert scored["test_coverage_raw"] < 0.75 and 0.92 <= scored["test_coverage_calibrated"] <= 0.98
    assert scored["test_mean_width_calibrated"] == pytest.approx(scored["interval_scale"] * 2 * 1.96)
    bounded = calibration.calibrate_run(tmp_path, tmp_path / "test.csv", "y", lower_bound=2.0)
    assert bounded["test_mean_width_calibrated"] < scored["test_mean_width_calibrated"]  # low ends clipped at 2


def test_calibration_keeps_the_rows_of_runs_whose_folders_are_gone(tmp_path, monkeypatch):
    """Rerunning benchmarks/calibration.py in a checkout without runs/ (they are not committed) keeps
    each earlier row whose run folder is gone, instead of dropping what was measured; a run with
    neither a folder nor an earlier row is listed as missing."""
    from benchmarks import calibration

    results = tmp_path / "results"
    _fixture(results, "table1", "mp_elastic_bulk", "crysdiff", 0, 12.0)
    _fixture(results, "table1", "mp_elastic_bulk", "crysdiff", 1, 12.5)
    layout = suite_jobs.Layout(quick=False, results=results, runs=tmp_path / "runs", splits=tmp_path / "splits",
                               ablation_models=tmp_path / "ablation")
    monkeypatch.setattr(calibration.Layout, "default", classmethod(lambda cls, quick=False: layout))
    earlier = {"experiment": "table1", "job_id": "mp_elastic_bulk.crysdiff.lf1.s0", "seed": 0, "interval_scale": 1.5,
               "test_coverage_raw": 0.8, "test_coverage_calibrated": 0.95}
    (results / "calibration").mkdir()
    (results / "calibration" / "runs.json").write_text(json.dumps({"rows": [earlier]}))
    assert calibration.main([]) == 0
    written = json.loads((results / "calibration" / "runs.json").read_text())
    assert written["rows"] == [earlier]
    assert written["kept_from_earlier"] == ["mp_elastic_bulk.crysdiff.lf1.s0"]
    assert written["missing_runs"] == ["mp_elastic_bulk.crysdiff.lf1.s1"]


def test_uncertainty_crossfit_moves_each_half_by_the_scale_of_the_other():
    """The out-of-sample check of a calibration (crysdiff calibrate's report, benchmarks/uncertainty.py
    for the bundled models). Each half's samples are moved about their means by the scale fitted on
    the other half only."""
    import numpy as np

    from benchmarks import uncertainty
    from crysdiff.calibrate import crossfit_calibrate

    rng = np.random.default_rng(1)
    n, s = 2000, 200
    mean = rng.uniform(1, 5, n)
    samples = mean[:, None] + rng.normal(size=(n, s))  # spread 1
    y = mean + 2.0 * rng.normal(size=n)  # errors of spread 2: intervals too narrow by 2
    moved, scales = crossfit_calibrate(y, samples, None, seed=0)
    assert len(scales) == 2 and all(1.7 < k < 2.3 for k in scales)
    assert np.allclose(moved.mean(axis=1), samples.mean(axis=1))  # the prediction does not move
    half = np.array_split(np.random.default_rng(0).permutation(n), 2)[0]
    ratio = moved[half].std(axis=1) / samples[half].std(axis=1)
    assert np.allclose(ratio, scales[0])  # the first half got the scale fitted on the second
    raw, calibrated = uncertainty.score(y, samples, 10), uncertainty.score(y, moved, 10)
    assert raw["coverage95"] < 0.75 and 0.93 <= calibrated["coverage95"] <= 0.97
    bounded, _ = crossfit_calibrate(y, samples, 2.0, seed=0)
    assert bounded.min() >= 2.0
    # the clipped samples' mean moves; the prediction scored is the chain's mean, as crysdiff predict reports
    assert uncertainty.score(y, bounded, 10, samples.mean(axis=1))["mae"] == pytest.approx(raw["mae"])


def test_report_shows_raw_and_calibrated_coverage(tmp_path):
    results = tmp_path / "results"
    _fixture(results, "table1", "mp_elastic_bulk", "crysdiff", 0, 8.0, coverage=0.6)
    _fixture(results, "table1", "mp_elastic_bulk", "scratch", 0, 9.0, coverage=0.7)
    rows = [{"experiment": "table1", "job_id": f"mp_elastic_bulk.{m}.lf1.s0.b1.5m", "task": "mp_elastic_bulk", "model": m,
             "label_fraction": 1.0, "seed": 0, "interval_scale": scale, "val_count": 50, "val_coverage_raw": raw,
             "test_count": 10, "test_coverage_raw": raw, "test_coverage_calibrated": cal, "test_mean_width_raw": 1.0,
             "test_mean_width_calibrated": scale, **commit}
            for m, scale, raw, cal, commit in (("crysdiff", 2.0, 0.6, 0.95, {"git_commit": "b" * 40}),
                                               ("scratch", 1.5, 0.7, 0.99, {}))]  # scratch: carried over, no commit
    (results / "calibration").mkdir(parents=True)
    (results / "calibration" / "runs.json").write_text(json.dumps({
        "rows": rows, "missing_runs": [], "level": 0.95, "command": "python benchmarks/calibration.py",
        "git_commit": "b" * 40, "machine": {}, "quick": False}))
    text = report.render(results, tmp_path / "results.md", tmp_path / "figures")
    assert "| bulk modulus (mp_elastic) (GPa) | 1.5 min | **8** | 9 | 0.6 → 0.95 |" in text
    assert "Calibrated on the validation set, as `crysdiff predict` reports it: within [0.90, 0.98] on 1 of 1 tasks" in text
    assert "| table1 | bulk modulus (mp_elastic) | crysdiff (pre-trained + CARD head, constant prior) | 100% | 1 | 2 | 0.6 | 0.95 |" in text
    # the carried-over row is shown, marked, and kept out of the count that only regenerable rows make
    assert "| table1 | bulk modulus (mp_elastic) | same network from scratch (CARD head) | 100% | 1 (1 ‡) | 1.5 | 0.7 | 0.99 |" in text
    assert "‡: 1 of 2 rows are carried over from a pass that recorded no commit" in text
    assert ("Cells with 95% coverage inside [0.90, 0.98], counting only cells whose every row records its commit: "
            "0 of 1 with the chain's own interval, 1 of 1 calibrated.") in text
    assert "With the carried-over rows too: 0 of 2 raw, 1 of 2 calibrated." in text


def test_report_probe_section_reads_layers_and_missing_rows(tmp_path):
    def probes(values):
        keys = ("layer0", "layer1", "layer2", "layer3", "pooled")
        return {"t": {k: {"mae": v, "r2": 0.5, "alpha": 1.0} for k, v in zip(keys, values)}}

    path = tmp_path / "probe" / "mp2018.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"train_count": 10, "val_count": 5, "command": "python benchmarks/probe.py", "encoders": {
        "pool": {"probes": probes((1.0, 1.1, 1.2, 1.3, 1.4))},
        "random": {"probes": probes((1.0, 1.0, 0.9, 0.9, 0.9))},
        "cartesian": {"probes": {"t": {"pooled": {"mae": 1.5, "r2": 0.1, "alpha": 1.0}}}}}}))
    text = "\n".join(report.section_probe(path))
    assert "| after layer 2 | 1.2 | **0.9** | – |" in text and "| output (what the head reads) | 1.4 | **0.9** | 1.5 |" in text
    assert "t: pooled output, pre-trained 1.4 vs. random 0.9 (+56%)" in text
    assert "t: through the pre-trained layers the probe error rises (1 → 1.1 → 1.2 → 1.3 → 1.4)" in text
    # a continuation of the pool model gets its own lines; the ablation pre-trainings do not
    encoders = json.loads(path.read_text())
    encoders["encoders"]["pool_long2"] = {"probes": probes((1.0, 0.95, 0.9, 0.85, 0.8))}
    path.write_text(json.dumps(encoders))
    text = "\n".join(report.section_probe(path))
    assert "t: pooled output, pre-trained (pool_long2) 0.8 vs. random 0.9 (-11%)" in text
    assert "t: through the pre-trained (pool_long2) layers the probe error does not rise steadily" in text
    assert "t: pooled output, pre-trained 1.4 vs. random 0.9 (+56%)" in text and "cartesian) 1.5" not in text
    assert "random initialisations" not in text  # one random encoder
    encoders["encoders"]["random_s1"] = {"probes": probes((1.0, 1.0, 0.9, 0.9, 0.95))}
    path.write_text(json.dumps(encoders))
    text = "\n".join(report.section_probe(path))
    assert "t: pooled output of 2 random initialisations 0.9 to 0.95 (the lines above compare with `random`)" in text


def test_report_marks_comparisons_across_machine_types_and_keeps_them_out_of_the_counts(tmp_path):
    """A wall-clock budget buys more steps on a faster machine: a Table 1 row whose columns ran on two
    machine types is marked and left out of the best-column count; runs with one step budget compare
    on any machine; the longer pre-training's tallies count only pairs on one machine type."""
    results = tmp_path / "results"
    for model, mae in (("crysdiff", 10.0), ("scratch", 11.0), ("regression", 12.0)):
        _fixture(results, "table1", "mp_elastic_bulk", model, 0, mae)  # one machine: counted
        _fixture(results, "table1", "mp_elastic_shear", model, 0, mae, cpu="fast cpu" if model == "crysdiff" else "test cpu")
    text = "\n".join(report.section_table1(report.aggregate(report.load_results(results)[0])))
    assert "| shear modulus (mp_elastic) (GPa) † |" in text and "| bulk modulus (mp_elastic) (GPa) |" in text
    assert "1 of 2 rows compare runs on one machine type or with one step budget (test cpu); 1 compare" in text
    assert "crysdiff (the paper's CARD head, constant prior) is the best column on 1 of 1 tasks" in text
    assert "lowers the test MAE on 1 of 1 tasks" in text
    # one step budget, reached by every run, compares on any machine; one cut short by its time cap does not
    fast, slow = ({"budget_steps": 900, "fit": {"steps": n}, "machine": {"cpu": cpu}} for n, cpu in ((900, "a"), (900, "b")))
    assert report.footing([fast, slow]) == "900 steps"
    assert report.footing([fast, slow | {"fit": {"steps": 700}}]) is None
    assert report.footing([fast, fast | {"budget_steps": 0}]) == "a"

    for model, cpu in (("gaussian_learned_longpre2", "fast cpu"), ("gaussian_learned", "test cpu"),
                       ("scratch_gaussian_learned", "test cpu")):
        experiment = "longpre-sparse" if model.endswith("longpre2") else "sparse-heads"
        _fixture(results, experiment, "mp_elastic_bulk", model, 0, 10.0 if cpu == "fast cpu" else 12.0, 0.05, cpu=cpu)
        for seed in (1, 2):  # seeds 1 and 2 of both on the fast machine: a fair mean over seeds
            if model != "gaussian_learned":
                _fixture(results, experiment, "mp_elastic_bulk", model, seed, 11.0 if model.endswith("longpre2") else 10.0,
                         0.05, cpu="fast cpu")
    text = "\n".join(report.section_longpre(report.aggregate(report.load_results(results)[0])))
    assert "| bulk modulus (mp_elastic) (GPa) | 5% | 12 | 12 | 10 | -17% † | -17% † | – |" in text
    assert "Pre-trained longer still vs. the pool model: no row on one machine type (1 rows mix machine types)." in text
    assert "1 seed pairs up to 40% ran on two machine types and are left out of the mean below." in text
    assert ("mean over the seeds both have on one machine type: pre-trained longer still beats scratch at 0 of 1 "
            "fractions up to 40% (issue 5 target: all): 5% 11 vs. 10 (+10%, seeds 1, 2)") in text


def test_report_prints_the_seeds_models_and_fractions_each_part_ran_with(tmp_path):
    results = tmp_path / "results"
    for model in ("crysdiff", "scratch"):
        for fraction in suite_jobs.FRACTIONS_SPARSE:
            _fixture(results, "sparse", "mp_elastic_bulk", model, 0, 10.0, fraction)
            _fixture(results, "sparse", "mp2018_formation", model, 0, 10.0, fraction)
    for seed in (1, 2):
        _fixture(results, "sparse", "mp_elastic_bulk", "crysdiff", seed, 10.0, 0.05)
    jobs = report.load_results(results)[0]
    assert report._part_flags(jobs, "sparse") == [" --seeds 0", " --seeds 1 2 --models crysdiff --fractions 0.05 "
                                                                "--tasks mp_elastic_bulk"]
    assert report._part_flags(jobs, "table1") == []


def test_step_budgets_name_their_jobs_and_cap_the_wall_clock():
    """``--budget-steps N``: every crysdiff job trains N optimiser steps (the same on any machine), the
    wall clock a safety cap; peers keep their wall-clock budget."""
    jobs = suite_jobs.make_jobs("sparse", budget_steps=300, models=("crysdiff", "cgcnn"), seeds=(0,))
    own = [j for j in jobs if j.model == "crysdiff"]
    assert own and all(j.budget_steps == 300 and j.job_id.endswith(".s0.b300st") for j in own)
    assert all(j.budget_minutes == suite_jobs.STEP_CAP_FACTOR * suite_jobs.TASKS[j.task].budget_minutes for j in own)
    assert all(j.budget_steps == 0 for j in jobs if j.model == "cgcnn")
    command = suite.finetune_command(suite_jobs.Layout.default(), own[0], suite.argparse.Namespace(
        train="t.csv", val="v.csv"))
    assert "train.max_steps=300" in command and f"train.max_time_minutes={own[0].budget_minutes:g}" in command
    assert not {j.job_id for j in own} & {j.job_id for j in suite_jobs.make_jobs("sparse")}
    capped = suite_jobs.make_jobs("sparse", budget_steps=300, budget_minutes=60, models=("crysdiff",), seeds=(0,))
    assert [j.job_id for j in capped] == [j.job_id for j in own] and all(j.budget_minutes == 60 for j in capped)


def test_report_shows_step_budget_runs_apart_and_compares_them_on_any_machine(tmp_path):
    results = tmp_path / "results"
    for model, mae, cpu in (("gaussian_learned_longpre2", 10.0, "fast cpu"), ("scratch_gaussian_learned", 12.0, "test cpu")):
        experiment = "longpre-sparse" if model.endswith("longpre2") else "sparse-heads"
        _fixture(results, experiment, "mp2018_formation", model, 0, mae, 0.05, cpu=cpu, steps=300)
        _fixture(results, experiment, "mp2018_formation", model, 0, 99.0, 0.05, cpu=cpu)  # the wall-clock run
    cells = report.aggregate(report.load_results(results)[0])
    assert cells[("sparse", "mp2018_formation", "scratch_gaussian_learned", 0.05)].maes == [99.0]  # never averaged together
    text = "\n".join(report.section_step_budgets(cells))
    assert "**longpre-sparse, 300 steps**" in text and "**sparse, 300 steps**" in text
    assert "| formation energy (mp2018) | 5% | same network from scratch (Gaussian head, learned prior) | 12 | 900 | 1.5 | test cpu |" in text
    assert "*Budget check* (computed from the results files): 1 of 1 task-and-fraction rows (every column in them) compare runs on one machine type or with one step budget (300 steps)." in text
    assert ("python benchmarks/suite.py --part sparse-heads --seeds 0 --models scratch_gaussian_learned --fractions 0.05 "
            "--tasks mp2018_formation --budget-steps 300") in text
    assert "5%, 300 steps: pre-trained longer still 10 vs. same network from scratch (Gaussian head, learned prior) 12 (-17%)." in text


def test_longer_still_uses_the_step_budget_rows_where_the_seed_0_wall_clock_rows_mix_machines(tmp_path):
    """Issue 27: the seed-0 "longer still" rows ran on another machine type than the pool-model and
    scratch rows; rerun at a step budget (job ids ``.b280st``), the comparison means the same on any
    machine, so the section shows the step row beside the wall-clock one and counts it instead."""
    results = tmp_path / "results"
    for fraction in (0.05, 0.1):
        for model, mae, cpu in (("gaussian_learned_longpre2", 10.0, "fast cpu"), ("gaussian_learned", 12.0, "test cpu"),
                                ("scratch_gaussian_learned", 11.0, "test cpu")):
            experiment = "longpre-sparse" if model.endswith("longpre2") else "sparse-heads"
            _fixture(results, experiment, "mp2018_formation", model, 0, mae, fraction, cpu=cpu, budget=4.0)
    text = "\n".join(report.section_longpre(report.aggregate(report.load_results(results)[0])))
    assert "| formation energy (mp2018) (GPa) | 5% | 11 | 12 | 10 | -17% † | -9.1% † | – |" in text
    assert "Pre-trained longer still vs. from scratch: no row on one machine type (2 rows mix machine types)." in text
    assert "pre-trained longer still against scratch up to 40%: not counted" in text
    # the step-budget reruns: the longest pre-training on the fast machine, the others on the slow one
    for model, mae, cpu in (("gaussian_learned_longpre2", 9.0, "fast cpu"), ("gaussian_learned", 9.5, "test cpu"),
                            ("scratch_gaussian_learned", 9.9, "slow cpu")):
        experiment = "longpre-sparse" if model.endswith("longpre2") else "sparse-heads"
        _fixture(results, experiment, "mp2018_formation", model, 0, mae, 0.05, cpu=cpu, budget=16.0, steps=280)
    jobs = report.load_results(results)[0]
    text = "\n".join(report.section_longpre(report.aggregate(jobs)))
    assert "| formation energy (mp2018) (GPa) | 5%, 280 steps | 9.9 | 9.5 | 9 | -5.3% | -9.1% | – |" in text
    assert "| formation energy (mp2018) (GPa) | 5% | 11 | 12 | 10 | -17% † | -9.1% † | – |" in text  # still shown, marked
    assert ("Pre-trained longer still vs. from scratch: lower test MAE in 1 of 1 rows, median change -9.1% "
            "(1 rows mixing machine types left out).") in text  # 5%: the step row; 10%: wall clock only, left out
    assert ("2 of 6 comparisons in the change columns compare runs on one machine type or with one step budget "
            "(280 steps); 4 compare wall-clock runs from different machine types") in text
    assert report.part_flags(jobs, "sparse-heads") == [
        " --seeds 0 --fractions 0.05 0.1 --tasks mp2018_formation",
        " --seeds 0 --models gaussian_learned scratch_gaussian_learned --fractions 0.05 --tasks mp2018_formation "
        "--budget-steps 280"]
    # a step-budget run that stopped short of its steps (its wall-clock cap came first) is not comparable
    _fixture(results, "sparse-heads", "mp2018_formation", "scratch_gaussian_learned", 0, 9.9, 0.05, cpu="slow cpu",
             budget=16.0, steps=280, fit={"steps": 200, "epochs": 1, "seconds": 960.0})
    text = "\n".join(report.section_longpre(report.aggregate(report.load_results(results)[0])))
    assert "| 5%, 280 steps | 9.9 | 9.5 | 9 | -5.3% | -9.1% † | – |" in text


def test_refine_intro_states_the_shares_of_the_split_files(tmp_path):
    """The Table 2 section's "refined on X% or Y%" comes from the splits' crystal counts, not typed."""
    committed = BENCHMARKS / "results" / "suite" / "refine"
    (tmp_path / "refine").mkdir()
    for path in committed.glob("*.json"):
        payload = json.loads(path.read_text())
        if payload.get("task") == "flla_refine20":  # 500 + 0 used against 500 tested: half
            parts = payload["split"]["parts"]
            parts["train"]["count"], parts["val"]["count"], parts["test"]["count"] = 500, 0, 500
        (tmp_path / "refine" / path.name).write_text(json.dumps(payload))
    text = "\n".join(report.section_refine(report.aggregate(report.load_results(tmp_path)[0])))
    assert "is refined on 50% or 80% of the `matminer/flla_2015` materials" in text
    assert "| 50% | the other 50% |" in text


def test_git_commit_is_read_in_a_worktree_too(tmp_path):
    """Results files record the commit that ran them; in a ``git worktree`` ``.git`` is a file and the
    refs live in the main repository (this read 'unknown' before)."""
    import subprocess

    def git(*args, cwd=tmp_path / "repo"):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                              capture_output=True, text=True).stdout.strip()

    (tmp_path / "repo").mkdir()
    git("init", "-q")
    (tmp_path / "repo" / "f").write_text("x")
    git("add", "f")
    git("commit", "-qm", "one")
    git("worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    head = git("rev-parse", "HEAD")
    assert suite.git_commit(tmp_path / "repo") == head
    assert suite.git_commit(tmp_path / "wt") == head
    git("pack-refs", "--all")  # refs only in packed-refs
    assert suite.git_commit(tmp_path / "wt") == head


def test_dropped_columns_never_run_again_and_rerun_keeps_their_results(tmp_path, monkeypatch):
    """Columns whose option was measured and removed (head.composition, head.layers) keep their results
    for the report's "Tried and dropped" section; the suite says so instead of failing on the unknown
    option, and ``--rerun`` leaves their results where they are."""
    assert {m for m in suite_jobs.MODELS if suite_jobs.removed_option(m)} >= {"composition", "gaussian_learned_longpre2_layers"}
    assert set(suite_jobs.REMOVED_OPTIONS) == {d.option for d in dropped.DROPPED}  # one list, described in the report
    layout = _layout(tmp_path)
    monkeypatch.setattr(suite.Runner, "_crysdiff", lambda self, job: pytest.fail(f"{job.job_id} should not run"))
    job = suite_jobs.Job("variants-extra", "mp2018_formation", "composition", 1.0, 0, 4.0)
    assert suite.Runner(layout, log=lambda message: None).run_job(job).startswith("not run: head.composition=true")
    layout.result_path(job).parent.mkdir(parents=True)
    layout.result_path(job).write_text(json.dumps({"experiment": "variants-extra", "test": {"mae": 0.1}}))
    monkeypatch.setattr(suite.Layout, "default", classmethod(lambda cls, quick=False, root=None: layout))
    monkeypatch.setattr(suite, "supersede", lambda layout, jobs: (tmp_path / "moved", len(jobs)))
    moved = []
    monkeypatch.setattr(suite, "supersede", lambda layout, jobs: (moved.extend(jobs), (tmp_path / "moved", len(jobs)))[1])
    suite.main(["--part", "variants-extra", "--models", "composition", "--rerun"])
    assert moved == [] and layout.result_path(job).is_file()


def test_report_says_which_runs_saw_canonical_cells():
    """Runs of commits before canonical cells became the default saw cells as given; peers always do."""
    from benchmarks.reporting.aggregate import CANONICAL_CELLS_COMMIT, cells_seen

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS.parent, capture_output=True, text=True).stdout.strip()
    before = subprocess.run(["git", "rev-parse", f"{CANONICAL_CELLS_COMMIT}~1"], cwd=BENCHMARKS.parent, capture_output=True,
                            text=True).stdout.strip()
    if not before:
        pytest.skip("this clone lacks the history before the canonical-cells commit")
    assert cells_seen({"model": "crysdiff", "git_commit": head}) == "canonical"
    assert cells_seen({"model": "crysdiff", "git_commit": before}) == "as given"
    assert cells_seen({"model": "cgcnn", "git_commit": head}) == "as given"  # a peer reads the files' cells
    # a commit this checkout does not have: by its date
    assert cells_seen({"model": "crysdiff", "git_commit": "f" * 40, "created": "2026-11-30T10:00:00+0000"}) == "as given"
    assert cells_seen({"model": "crysdiff", "git_commit": "e" * 40, "created": "2026-12-02T10:00:00+0000"}) == "canonical"
