"""A run's logs: the CSV logger training writes through (a kill never truncates it), the logs read
back as rows of numbers (joined across the segments of a resumed run) and the loss curves drawn
from them. Reading needs no Lightning; only :func:`run_loggers` imports it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

__all__ = ["read_metrics", "plot_curves", "run_loggers", "keep_earlier_log", "csv_logger_class"]


def csv_logger_class():
    """Lightning's ``CSVLogger`` whose log is never truncated in place.

    When a row brings a new column (the first validation row after training rows), Lightning
    rewrites ``metrics.csv`` with the wider header by opening it for writing and writing every row
    back; a run killed between the two loses its whole log. Here the wider file is written beside
    it and moved over it in one ``os.replace``, so a kill leaves the old log or the new one."""
    import os

    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class _Writer(ExperimentWriter):
        def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
            with open(self.metrics_file_path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            partial = self.metrics_file_path + ".partial"
            with open(partial, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self.metrics_file_path)

    class _Logger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> ExperimentWriter:
            if self._experiment is None:
                Path(self.log_dir).mkdir(parents=True, exist_ok=True)
                self._experiment = _Writer(log_dir=self.log_dir)
            return self._experiment

    return _Logger, _Writer


def run_loggers(out_dir: Path, flush_every: int):
    csv_logger, _ = csv_logger_class()
    # flushed as often as rows are logged: a killed run keeps its log up to the kill
    loggers = [csv_logger(str(out_dir), name="logs", version="", flush_logs_every_n_steps=max(1, flush_every))]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=""))
    except ImportError:
        pass
    return loggers


def keep_earlier_log(out_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``; a resumed run keeps it as the next
    ``metrics-partK.csv`` (``read_metrics`` joins the parts in order)."""
    log = out_dir / "logs" / "metrics.csv"
    if log.is_file():
        k = 1
        while (out_dir / "logs" / f"metrics-part{k}.csv").exists():
            k += 1
        log.rename(out_dir / "logs" / f"metrics-part{k}.csv")


def read_metrics(out_dir: str | Path) -> list[dict[str, float]]:
    """Rows of ``OUT/logs/metrics.csv`` with numeric values (empty cells dropped), preceded by those of
    the logs of earlier, interrupted segments of the run (``metrics-part1.csv``, ...).

    A segment killed after its last checkpoint logged steps that the resumed segment trains again;
    those rows belong to no step of the finished run, so an earlier segment's rows at or after the
    first step a later segment logged are dropped (the run's log then has each step once)."""
    logs = Path(out_dir) / "logs"
    parts = sorted(logs.glob("metrics-part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics-part") or 0))
    rows = []
    for path in [*parts, logs / "metrics.csv"]:
        if not path.is_file():
            continue
        segment = _read_log(path)
        steps = [row["step"] for row in segment if "step" in row]
        if steps:
            rows = [row for row in rows if row.get("step", -1) < min(steps)]
        rows.extend(segment)
    return rows


def _read_log(path: Path) -> list[dict[str, float]]:
    text = path.read_text()
    if not text.endswith("\n"):  # a kill in the middle of appending a row: its cut-off numbers are not read
        text = text[: text.rfind("\n") + 1]
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        parsed = {}
        for key, value in row.items():
            if key is not None and value not in ("", None):  # cells beyond the header are dropped
                try:
                    parsed[key] = float(value)
                except ValueError:
                    pass
        rows.append(parsed)
    return rows


def plot_curves(out_dir: str | Path, keys: list[str], filename: str = "loss_curve.png", title: str = "") -> Path | None:
    """Draw the logged curves ``keys`` against the step into ``OUT/filename``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out_dir)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimiser step")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out_dir) / filename
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
