"""The result-row store: jsonl rows {suite, model, dataset, step, task, metric, value, n}.

Evaluations and analyses append rows; a re-run skips what is there; figures read rows alone.
Per-item rows (for studies that join on items) live in a second file with an `item` field.
"""

from __future__ import annotations

import fcntl
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


def read_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Every row of a results file (none if it does not exist); a torn last line is skipped."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a run killed while writing its last row
                continue
            raise DataFormatError(f"{path}:{number}: not a JSON result row") from None
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

    def rows(self) -> list[dict]:
        return list(read_rows(self.path))

    def items(self) -> list[dict]:
        return list(read_rows(self.items_path))
