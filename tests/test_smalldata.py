"""The small-data benchmark harness (benchmarks/smalldata.py): folds, label-fraction subsets,
resumability and the table generator. No model is trained: a stand-in peer predicts the mean."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from sklearn.model_selection import KFold

from benchmarks import smalldata
from benchmarks.peers.feature_peer import cached_features
from benchmarks.smalldata import Column, Job, Layout, Task
from benchmarks.smalldata_report import render, summarise
from crysdiff.crystal import Crystal

MEAN_PEER = """
import sys, json, pathlib
import numpy as np
sys.path.insert(0, {root!r})
from benchmarks.peers import feature_peer
args = feature_peer.parser("mean").parse_args(sys.argv[1:])
calls = pathlib.Path(args.out).parent / "calls.txt"
calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
feature_peer.run(args, lambda frames: (["n"], np.array([[len(a)] for a in frames], float)),
                 lambda xt, yt, xv, yv, xs: (np.full(len(xs), yt.mean()), {{}}), {{}})
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A 23-crystal task with a positive label learnt as log10, and a stand-in peer column."""
    rng = np.random.default_rng(3)
    frames = []
    for k in range(23):
        crystal = Crystal(np.array([11, 17]), np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), np.eye(3) * (4 + 0.1 * k),
                          id=f"toy-{k}")
        frames.append(smalldata._frame_text(crystal, {"K": float(rng.uniform(10, 300))}, crystal.id))
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.extxyz").write_text("".join(frames))
    monkeypatch.setattr(smalldata, "TASKS", {"toy": Task("toy task", ("toy.extxyz",), "K", "GPa", log10=True)})
    script = tmp_path / "mean_peer.py"
    script.write_text(MEAN_PEER.format(root=str(smalldata.ROOT)))
    monkeypatch.setattr(smalldata, "COLUMNS", {
        "mean": Column("mean", "features", False, f"{sys.executable} {script}", family="mean"),
        "crysdiff": smalldata.COLUMNS["crysdiff"], "cgcnn": smalldata.COLUMNS["cgcnn"]})
    monkeypatch.setattr(smalldata, "DATA", data)
    layout = Layout(False, tmp_path / "results", tmp_path / "runs")
    smalldata.build_task_file(layout, "toy", data=data)
    return layout


def test_folds_are_sklearn_kfold_and_partition():
    n = 37
    expected = [np.sort(test) for _, test in KFold(5, shuffle=True, random_state=18012019).split(np.arange(n))]
    got = smalldata.kfold_tests(n)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert np.array_equal(np.sort(np.concatenate(got)), np.arange(n))
    # not the unshuffled split, and not another seed's
    assert not np.array_equal(got[0], np.arange(8))
    other = [np.sort(t) for _, t in KFold(5, shuffle=True, random_state=0).split(np.arange(n))]
    assert not all(np.array_equal(a, b) for a, b in zip(got, other))


def test_label_fractions_nested_seeded_and_inside_the_training_fold():
    n = 400
    for fold in range(5):
        test = smalldata.kfold_tests(n)[fold]
        previous = set()
        for fraction in smalldata.FRACTIONS:
            parts = smalldata.fold_positions(n, fold, fraction)
            again = smalldata.fold_positions(n, fold, fraction)
            assert all(np.array_equal(parts[p], again[p]) for p in parts)  # seeded
            labelled = set(parts["train"]) | set(parts["val"])
            assert not labelled & set(test) and not set(parts["train"]) & set(parts["val"])
            assert np.array_equal(parts["test"], test)
            assert previous <= labelled  # nested
            assert len(labelled) == int(np.ceil(fraction * (n - len(test)) - 1e-9))
            assert len(parts["val"]) == int(np.ceil(0.1 * len(labelled) - 1e-9))
            previous = labelled
        assert previous == set(range(n)) - set(test)


def test_every_column_reads_the_same_fold_files(toy):
    job = {c: Job("toy", c, 1.0, 2, 1.0 if smalldata.COLUMNS[c].neural else 0.0, 40 if smalldata.COLUMNS[c].neural else 0)
           for c in smalldata.COLUMNS}
    folder = toy.fold_dir("toy", 1.0, 2)
    for column, j in job.items():
        words = " ".join(w for c in smalldata.job_commands(toy, j) for w in c)
        for part in ("train", "val", "test"):
            assert str(folder / f"{part}.extxyz") in words, column
        assert "log10_K" in words
    smalldata.build_fold(toy, "toy", 1.0, 2)
    split = json.loads((folder / "split.json").read_text())
    ids = [f"toy-{k}" for k in range(23)]
    assert split["parts"]["test"]["ids"] == [ids[k] for k in smalldata.kfold_tests(23)[2]]
    # the written test file holds exactly those crystals with their labels (crysdiff's own reader)
    from benchmarks.suite import test_labels

    labels = test_labels(folder / "test.extxyz", "log10_K")
    assert sorted(labels) == sorted(split["parts"]["test"]["ids"])
    raw = test_labels(folder / "test.extxyz", "K")
    assert all(abs(10 ** labels[i] - raw[i]) < 1e-6 * raw[i] for i in labels)


def test_done_fold_is_skipped_and_rerun_moves_it_aside(toy, monkeypatch, capsys):
    monkeypatch.setattr(smalldata.Layout, "default", classmethod(lambda cls, quick=False: toy))
    argv = ["--models", "mean", "--folds", "0"]
    (toy.results / "toy.mean.lf1.f1.json").parent.mkdir(parents=True)
    (toy.results / "toy.mean.lf1.f1.json").write_text("{}")  # fold 1 done earlier
    assert smalldata.main(["--models", "mean", "--folds", "0", "1"]) == 0
    calls = toy.runs / "jobs" / "calls.txt"
    assert calls.read_text() == "x"  # fold 0 only
    result = json.loads((toy.results / "toy.mean.lf1.f0.json").read_text())
    assert result["test"]["count"] == len(smalldata.kfold_tests(23)[0])
    assert result["test"]["mae_unit"] > 0 and result["commands"]
    assert len(result["git_commit"].split("+")[0]) == 40  # a real commit, also in a git worktree
    assert result["invocation"] == "python -m benchmarks.smalldata --models mean --folds 0 1"
    assert result["protocol"]["kfold"] == [5, True, 18012019]
    assert smalldata.main(argv) == 0  # done: nothing runs
    assert calls.read_text() == "x"
    assert "skipped (results exist)" in capsys.readouterr().out
    assert smalldata.main([*argv, "--rerun"]) == 0
    assert calls.read_text() == "xx"
    assert len(list((toy.runs / "superseded").glob("*/results/toy.mean.lf1.f0.json"))) == 1
    assert (toy.results / "toy.mean.lf1.f1.json").read_text() == "{}"  # not selected: untouched
    # the feature cache holds every crystal once (fold 0's train, val and test are all 23)
    cache = json.loads((toy.runs / "features" / "mean" / "toy.extxyz.json").read_text())
    assert len(cache["rows"]) == 23


def test_feature_cache_computes_each_crystal_once(tmp_path):
    seen = []

    def featurise(frames):
        seen.extend(frames)
        return ["a", "b"], np.array([[f, float("nan")] for f in frames], float)

    cache = tmp_path / "c.json"
    names, x = cached_features(cache, ["p", "q"], [1.0, 2.0], featurise)
    _, y = cached_features(cache, ["q", "r"], [2.0, 3.0], featurise)
    assert names == ["a", "b"] and seen == [1.0, 2.0, 3.0]
    assert y[0, 0] == 2.0 and np.isnan(y[0, 1]) and x.shape == (2, 2)


def _fixture_result(task, column, fraction, fold, mae, coverage=None):
    test = {"mae": mae, "count": 10, "mae_unit": 10 * mae} | ({"coverage95": coverage} if coverage else {})
    return {"task": task, "column": column, "label_fraction": fraction, "fold": fold, "test": test,
            "seconds": {"total": 60.0}, "git_commit": "abcdef123"}


def test_table_generator_on_fixture_results(tmp_path):
    results = [_fixture_result("bulk_modulus", "crysdiff", 1.0, k, m, c) for k, (m, c) in
               enumerate([(0.05, 0.9), (0.07, 0.94)])]
    results += [_fixture_result("bulk_modulus", "rf", 1.0, k, m) for k, m in enumerate([0.04, 0.05, 0.06])]
    results += [_fixture_result("bulk_modulus", "rf", 0.1, 0, 0.09)]
    summary = summarise(results)
    assert summary[("bulk_modulus", 1.0, "rf")]["mae"] == pytest.approx((0.05, 0.01, 3))
    text = render(results, None, quick=True)
    assert "--quick` smoke run, not the benchmark" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    crysdiff_row = rows[smalldata.COLUMNS["crysdiff"].label]
    assert "0.06 ± 0.014" in crysdiff_row and "0.92 ± 0.028" in crysdiff_row and "0.6 ± 0.14" in crysdiff_row
    assert "**0.05 ± 0.01**" in rows[smalldata.COLUMNS["rf"].label]  # best MAE in bold
    assert "| 2 |" in crysdiff_row and "| 3 |" in rows[smalldata.COLUMNS["rf"].label]
    from benchmarks.smalldata_report import fraction_figure

    png = fraction_figure(summary, tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_neural_columns_share_one_step_budget_and_the_cap_is_a_safety_limit():
    """Every neural column trains for the same optimiser steps (EPOCHS passes at batch 64, at least
    MIN_STEPS) with the same warm-up and validation spacing; the wall-clock cap is passed as a cap."""
    jobs = [j for j in smalldata.make_jobs(folds=[0]) if smalldata.COLUMNS[j.column].neural]
    layout = Layout(False, smalldata.ROOT / "nowhere" / "results", smalldata.ROOT / "nowhere" / "runs")
    by_task = {}
    for job in jobs:
        words = [w for c in smalldata.job_commands(layout, job) for w in c]
        assert f"train.max_steps={job.steps}" in words, job.job_id
        assert f"train.warmup_steps={job.warmup}" in words, job.job_id
        if job.column != "alignn":  # ALIGNN validates every tenth of its max_steps itself
            assert f"train.val_every_steps={job.validate_every}" in words, job.job_id
        cap = {"crysdiff": f"train.max_time_minutes={job.budget_minutes:g}"}.get(smalldata.COLUMNS[job.column].kind)
        assert (cap in words) if cap else words[words.index("--minutes") + 1] == f"{job.budget_minutes:g}"
        by_task.setdefault((job.task, job.label_fraction), set()).add((job.steps, job.budget_minutes))
    assert all(len(v) == 1 for v in by_task.values())  # identical budgets across the columns
    bulk = {f: next(iter(by_task[("bulk_modulus", f)]))[0] for f in smalldata.FRACTIONS}
    count = len(smalldata.fold_positions(2988, 0, 1.0)["train"])
    assert bulk[1.0] == smalldata.EPOCHS * -(-count // 64)
    assert bulk[min(smalldata.FRACTIONS)] == smalldata.MIN_STEPS  # 10% of bulk modulus: the minimum
    assert all(j.budget_minutes == smalldata.CAP_MINUTES for j in jobs)


def test_full_plan_fits_its_limits_on_the_measured_costs():
    """The issue's limits: at most 12 h in all, parts of at most 2 h, --quick within 30 min (loaded costs)."""
    for quick, limit in ((False, 12 * 60), (True, 30)):
        jobs = smalldata.make_jobs(quick=quick)
        table = smalldata.parts(jobs, quick)
        minutes = {name: sum(smalldata.estimate_minutes(j, quick) for j in part) for name, part in table.items()}
        assert sum(minutes.values()) <= limit, (quick, sum(minutes.values()))
        assert max(minutes.values()) <= smalldata.PART_LIMIT_MINUTES
        assert {j.column for j in jobs} == set(smalldata.COLUMNS)
        assert {j.task for j in jobs} == set(smalldata.TASKS)
        if not quick:
            assert {j.fold for j in jobs} == set(range(5))
            curve = {(j.task, j.column) for j in jobs if j.label_fraction < 1}
            assert curve == {(t, c) for t in smalldata.CURVE_TASKS for c in smalldata.COLUMNS}


def test_in_process_command_writes_its_log_and_a_failure_raises(tmp_path, monkeypatch):
    """``python -m M`` of IN_PROCESS runs as M.main(argv) here: its output lands in the job log, a
    non-zero exit or an exception raises with the log's tail, as a failed subprocess does."""
    import types

    module = types.ModuleType("toy_runner")

    def main(argv):
        print("hello from", *argv)
        if argv[0] == "boom":
            raise ValueError("no such crystal")
        return int(argv[0] == "fail")

    module.main = main
    monkeypatch.setitem(sys.modules, "toy_runner", module)
    monkeypatch.setitem(smalldata.IN_PROCESS, "toy_runner", "toy_runner")
    log = tmp_path / "job.log"
    smalldata._run([sys.executable, "-m", "toy_runner", "ok"], log)
    assert "hello from ok" in log.read_text()
    for word, shown_ in (("fail", "exited with 1"), ("boom", "no such crystal")):
        with pytest.raises(RuntimeError, match=shown_):
            smalldata._run([sys.executable, "-m", "toy_runner", word], log)
    print("still printing here")  # stdout restored
