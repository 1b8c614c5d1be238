"""Building parts: sources cut into tasks here, parsed by worker processes, written in order."""

from __future__ import annotations

import multiprocessing
import sys
import threading
from pathlib import Path

from crysdiff.cache.writer import Packed, PartWriter
from crysdiff.cells import AS_GIVEN, CellConfig, canonical_cells
from crysdiff.crystal import Crystal, RecordError, ValidationSettings

_WORKER_SETTINGS: ValidationSettings | None = None
_WORKER_CELL: CellConfig = AS_GIVEN


def _init_worker(settings: ValidationSettings, cell: CellConfig = AS_GIVEN) -> None:
    global _WORKER_SETTINGS, _WORKER_CELL
    _WORKER_SETTINGS, _WORKER_CELL = settings, cell


def _run(job):
    """Worker: ``(group, slot, task)`` -> ``(group, slot, packed results)``; a whole-source failure passes through."""
    from crysdiff.io import run_task

    group, slot, task = job
    if isinstance(task, RecordError):
        return group, slot, Packed([task])
    results = run_task(task, _WORKER_SETTINGS)
    if _WORKER_CELL.canonical:  # the whole task at once (crysdiff.cell_basis batches the basis choice)
        places = [i for i, r in enumerate(results) if isinstance(r, Crystal)]
        for i, reduced in zip(places, canonical_cells([results[i] for i in places], _WORKER_CELL)):
            results[i] = reduced
    return group, slot, Packed(results)


def _jobs(groups, chunk_size: int):
    from crysdiff.io import plan

    for g, sources in enumerate(groups):
        for slot, source in enumerate(sources):
            try:
                for task in plan(source, chunk_size=chunk_size):
                    yield g, slot, task
            except RecordError as error:
                yield g, slot, error


class _PartSequence:
    """The parts of ``groups`` written in group order from results that arrive in order: one part
    is open at a time, and a group that yielded nothing still gets its (empty) part."""

    def __init__(self, groups, keys, root: Path, strict: bool, settings: ValidationSettings, cell: CellConfig, units):
        self.groups, self.keys, self.root, self.strict, self.settings, self.cell = groups, keys, root, strict, settings, cell
        self.units = units
        self.writer: PartWriter | None = None
        self.done = 0  # groups finished

    def _open(self) -> PartWriter:
        done = self.done
        return PartWriter(self.root, self.keys[done], self.groups[done], self.strict, self.settings, self.cell)

    def add(self, g: int, slot: int, items: Packed) -> None:
        """The results ``items`` of source ``slot`` of group ``g``; the groups before ``g`` are complete."""
        while self.writer is None or g > self.done:
            if self.writer is not None:  # group finished (or groups that yielded nothing)
                self.writer.finish(self.units)
                self.done += 1
            self.writer = self._open()
        self.writer.add(items, slot)

    def finish(self) -> None:
        while self.done < len(self.groups):
            if self.writer is None:
                self.writer = self._open()
            self.writer.finish(self.units)
            self.writer = None
            self.done += 1

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def build_parts(groups, keys, root: Path, settings, strict, workers, progress, cell: CellConfig = AS_GIVEN) -> None:
    """Parse ``groups`` (lists of sources) into parts ``root/keys[g]``; results arrive in order, so
    one part is open at a time."""
    from crysdiff.io import KNOWN_UNITS

    bar = _progress(progress)
    parts = _PartSequence(groups, keys, root, strict, settings, cell, KNOWN_UNITS)
    pool = None
    # Pool.imap drains its input eagerly: cap the tasks in flight so raw payloads of a huge corpus
    # are never all in memory at once.
    in_flight, stop = threading.Semaphore(4 * workers + 2), threading.Event()

    def throttled():
        for job in _jobs(groups, 256):
            while not in_flight.acquire(timeout=0.1):
                if stop.is_set():
                    return
            yield job

    try:
        if workers <= 1:
            _init_worker(settings, cell)
            results = map(_run, throttled())
        else:
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = context.Pool(workers, initializer=_init_worker, initargs=(settings, cell))
            results = pool.imap(_run, throttled(), chunksize=1)
        for g, slot, items in results:
            in_flight.release()
            parts.add(g, slot, items)
            if bar is not None:
                bar.update(bar.task_id, advance=items.records)
        parts.finish()
    except BaseException:
        parts.abort()
        raise
    finally:
        stop.set()
        if pool is not None:
            _stop_pool(pool)
        if bar is not None:
            bar.stop()


def _stop_pool(pool) -> None:
    """``Pool.terminate()``, made safe after an error. CPython's pool can hang in terminate: its task
    feeder thread may be blocked writing a large task (raw file text) into the pipe of workers that
    are already gone, and terminate waits for that thread. So terminate runs in a helper thread; if it
    has not finished after a few seconds, the parent's read end of the task pipe is closed, which
    turns the blocked write into an error and lets terminate finish."""
    closer = threading.Thread(target=pool.terminate, name="crysdiff-pool-terminate", daemon=True)
    closer.start()
    closer.join(5.0)
    if closer.is_alive():
        try:
            pool._inqueue._reader.close()  # CPython's Pool keeps the task pipe here
        except (AttributeError, OSError):
            pass
        closer.join(30.0)


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("parsing structures"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    bar.task_id = bar.add_task("parse", total=None)
    bar.start()
    return bar
