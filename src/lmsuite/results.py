"""The result-row store: jsonl rows {suite, model, dataset, step, task, metric, value, n}.

Evaluations and analyses append rows; a re-run skips what is there; figures read rows alone.
Per-item rows (for studies that join on items) live in a second file with an `item` field.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmsuite.errors import DataFormatError

FIELDS = ("suite", "model", "dataset", "step", "task", "metric", "value", "n")


@dataclass(frozen=True)
class Source:
    """Which checkpoint a row describes."""

    suite: str | None
    model: str
    dataset: str | None
    step: int | None

    def row(self, task: str, metric: str, value: float, n: int, **extra) -> dict:
        return {"suite": self.suite, "model": self.model, "dataset": self.dataset,
                "step": self.step, "task": task, "metric": metric, "value": value, "n": n,
                **extra}

    def key(self, task: str) -> tuple:
        return (self.suite, self.model, self.dataset, self.step, task)


ROW_FIELDS = ("model", "step", "task", "metric", "value")
"""What every result row holds (besides suite, dataset, n and, where known, stderr)."""


def read_rows(path: str | os.PathLike, fields: tuple[str, ...] = ROW_FIELDS) -> Iterator[dict]:
    """Every row of a results file (none if it does not exist); a torn last line is skipped,
    a row without one of `fields` is an error naming the file, line and field."""
    path = Path(path)
    if not path.exists():
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text (byte {e.start}); not a results file"
                              ) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a run killed while writing its last row
                continue
            raise DataFormatError(f"{path}:{number}: not a JSON result row") from None
        missing = [k for k in fields if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataFormatError(f"{path}:{number}: a row needs {', '.join(fields)}; field "
                                  f"{missing[0]!r} missing")
        yield row


@contextmanager
def _locked(path: Path) -> Iterator[BinaryIO]:
    """The file opened for appending and reading, under an exclusive lock: evaluations of
    several models may share a results file."""
    with open(path, "ab+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield f


def _write(f: BinaryIO, lines: list[str]) -> None:
    """Append whole lines, durably. A torn last line (a writer killed mid-row) is cut off
    first, so that it does not fuse with the next row."""
    end = f.seek(0, os.SEEK_END)
    f.seek(max(0, end - 1))
    if end and f.read(1) != b"\n":  # a torn last row: cut back to the end of the one before
        keep = end
        while keep > 0:
            start = max(0, keep - 65536)
            f.seek(start)
            newline = f.read(keep - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        f.truncate(keep)
    f.write("".join(lines).encode())
    f.flush()
    os.fsync(f.fileno())


def _key(row: dict) -> tuple:
    """The (checkpoint, task) a row belongs to, as `Source.key` gives it."""
    return tuple(row.get(field) for field in FIELDS[:5])


class ResultStore:
    """Rows in `path` (and per-item rows in `<stem>_items.jsonl` beside it), appended once.

    A (checkpoint, task) pair counts as done when its rows are in the file: they are written
    together, after the task finished, so an interrupted run redoes only unfinished tasks.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.items_path = self.path.with_name(f"{self.path.stem}_items.jsonl")
        self._done: set[tuple] = set()
        self._seen = 0  # bytes of the file read so far: whole rows only
        self._lines = 0  # and their lines
        if self.path.exists():
            with open(self.path, "rb") as f:
                self._catch_up(f)

    def _catch_up(self, f: BinaryIO) -> None:
        """Take in the rows appended since this store last read the file (by other processes
        evaluating at the same time)."""
        f.seek(self._seen)
        new = f.read()
        whole = new[: new.rfind(b"\n") + 1]  # a torn last row is not a row
        lines = whole.decode().split("\n")[:-1]
        for number, line in enumerate(lines, self._lines + 1):
            if line.strip():
                try:
                    self._done.add(_key(json.loads(line)))
                except json.JSONDecodeError:
                    raise DataFormatError(f"{self.path}:{number}: not a JSON result row") \
                        from None
        self._seen += len(whole)
        self._lines += len(lines)

    def done(self, source: Source, task: str) -> bool:
        return source.key(task) in self._done

    def add(self, source: Source, task: str, rows: Iterable[dict],
            items: Iterable[dict] = ()) -> bool:
        """Append a finished task's rows (items first, so the summary row marks completion);
        False, appending nothing, when another process evaluating at the same time appended
        that (checkpoint, task) first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path) as f:
            self._catch_up(f)
            if source.key(task) in self._done:
                return False
            items = [json.dumps(r) + "\n" for r in items]
            if items:
                with _locked(self.items_path) as g:
                    _write(g, items)
            rows = [json.dumps(r) + "\n" for r in rows]
            _write(f, rows)
            self._seen, self._lines = f.tell(), self._lines + len(rows)
        self._done.add(source.key(task))
        return True

    def add_all(self, entries: list[tuple[Source, str, list[dict]]]) -> int:
        """Append the rows of every (checkpoint, task) not already in the file, in one write
        (an import of thousands of them); the number of rows appended."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path) as f:
            self._catch_up(f)
            lines = []
            for source, task, rows in entries:
                if source.key(task) not in self._done:
                    self._done.add(source.key(task))
                    lines += [json.dumps(r) + "\n" for r in rows]
            if lines:
                _write(f, lines)
                self._seen, self._lines = f.tell(), self._lines + len(lines)
        return len(lines)

    def rows(self) -> list[dict]:
        return list(read_rows(self.path))

    def items(self) -> list[dict]:
        return list(read_rows(self.items_path))


# --- the run's files as pandas DataFrames, for the report and for notebooks -------------------


@dataclass
class Frames:
    """A run folder's results as DataFrames (empty where a stage has not run)."""

    rows: object
    """Every result row of results/*.jsonl: suite, model, dataset, step, task, metric, value,
    n (and stderr where a metric has one)."""
    metrics: object
    """Training metrics per step: folder, model, dataset, step, loss, lr, tokens, ..."""
    memorization: object
    """Per sample and scanned checkpoint: folder, model, dataset, step, index, memorized,
    prefix_len, window_count."""
    frequency: object
    """Per term and checkpoint: folder, model, dataset, step, task, count, acc."""
    suite: object
    """Per model folder: its shape, parameters, tokens seen, wall time, data hash, branch."""
    poisson: dict
    """Per model folder, the Poisson view of its last checkpoint (arrays)."""
    run_dir: Path
    published: object = None
    """Published rows to compare with (suite "pythia"): those imported into the run's results
    with `lmsuite import lm-eval`, and those of a Pythia evals/ folder given to `frames`."""

    @functools.cached_property
    def items(self):
        """The per-item rows of the evaluations (results/*_items.jsonl), each item's fields as
        columns item_<field> (read when first asked for: the report does not need them)."""
        from lmsuite.runs import Run

        records = []
        results = Run(self.run_dir).results
        for path in sorted(results.glob("*_items.jsonl")) if results.is_dir() else []:
            for row in read_rows(path):
                row.update({f"item_{k}": v for k, v in (row.pop("item", None) or {}).items()})
                records.append(row)
        return _frame(records)


def _frame(records: list[dict]):
    import pandas as pd

    return pd.DataFrame.from_records(records)


PUBLISHED_SUITE = "pythia"
"""The suite name of published rows (`lmsuite import lm-eval --all`)."""


def frames(run_dir: str | os.PathLike, compare: str | os.PathLike | None = None) -> Frames:
    """The run's rows, per-item rows, training metrics, memorization flags and the rest as
    DataFrames: `frames("runs/tiny").rows.query("task == 'lambada'")`. Published rows (suite
    "pythia", in the run's results or read from the Pythia evals/ folder `compare`) are kept
    apart, in `.published`."""
    import numpy as np

    from lmsuite.runs import Run, list_steps, read_json_object, split_model_folder

    run = Run(run_dir)
    rows = []
    if run.results.is_dir():
        for path in sorted(run.results.glob("*.jsonl")):
            if not path.name.endswith("_items.jsonl"):
                rows += list(read_rows(path))
    metrics, suite, flags, curves, poisson = [], [], [], [], {}
    for folder in run.model_folders():
        steps = list_steps(folder)
        record = read_json_object(folder / f"step{steps[-1]}" / "provenance.json",
                                  "a checkpoint's provenance") or {}
        model, dataset = record.get("model"), record.get("dataset")
        if model is None:
            model, dataset = split_model_folder(folder.name)
        if (folder / "metrics.jsonl").is_file():
            for row in read_rows(folder / "metrics.jsonl", fields=("step", "loss")):
                metrics.append({"folder": folder.name, "model": model, "dataset": dataset, **row})
        suite.append(_describe(folder, steps, record, model, dataset))
        for step in steps:
            path = run.memorization(folder.name, step)
            if path.is_file():
                data = np.load(path)
                flags.append(_frame({"folder": folder.name, "model": model, "dataset": dataset,
                                     "step": step, "index": data["index"],
                                     "memorized": data["memorized"],
                                     "prefix_len": data["prefix_len"],
                                     "window_count": data["window_count"]}))
        summary = run.memorization_summary(folder.name)
        if summary.is_file():
            poisson[folder.name] = dict(np.load(summary))
        curve_path = run.frequency_curves(folder.name)
        if curve_path.is_file():
            for step, by_task in json.loads(curve_path.read_text())["steps"].items():
                for task, points in by_task.items():
                    curves += [{"folder": folder.name, "model": model, "dataset": dataset,
                                "step": int(step), "task": task, "count": c, "acc": a}
                               for c, a in zip(points["count"], points["acc"], strict=True)]
    import pandas as pd

    published = [r for r in rows if r.get("suite") == PUBLISHED_SUITE]
    rows = [r for r in rows if r.get("suite") != PUBLISHED_SUITE]
    if compare is not None:
        from lmsuite.evaluate.imports import pythia_files, rows_of_files

        published += rows_of_files(pythia_files(compare), suite=PUBLISHED_SUITE)
    return Frames(_frame(rows), _frame(metrics),
                  pd.concat(flags, ignore_index=True) if flags else _frame([]),
                  _frame(curves), _frame(suite), poisson, Path(run_dir),
                  _frame(published).drop_duplicates(["model", "dataset", "step", "task",
                                                     "metric"]) if published else _frame([]))


def _describe(folder: Path, steps: list[int], record: dict, model: str, dataset: str) -> dict:
    """A model folder's line of the suite table."""
    from lmsuite.model.hf import read_model_config
    from lmsuite.model.neox import count_parameters

    cfg = read_model_config(folder / f"step{steps[-1]}")
    last = None
    if (folder / "metrics.jsonl").is_file():
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1]) if lines else None
    branch = record.get("branch") or {}
    return {"folder": folder.name, "model": model, "dataset": dataset, "layers": cfg.layers,
            "d_model": cfg.d_model, "heads": cfg.heads, "parameters": count_parameters(cfg),
            "non_embedding_parameters": count_parameters(cfg, embeddings=False),
            "steps": steps[-1], "checkpoints": len(steps),
            "tokens": record.get("tokens", last["tokens"] if last else None),
            "wall_s": last["elapsed_s"] if last else None,
            "train_bin_sha256": record.get("train_bin_sha256"),
            "branch_of": branch.get("original"), "fork_step": branch.get("fork_step"),
            "reused_from": record.get("reused_from")}
