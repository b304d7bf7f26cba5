"""Progress of long work: a bar per task (rate, ETA), or, inside a job of several stages
(`lmsuite run`), one line for the whole job: stage, what runs, the job's elapsed time and ETA.

Code that works through items asks `bar(...)` for its bar, telling what one item is worth in
the job's units of work (`weight`). Inside `job(...)` that bar moves the job's line instead of
drawing its own, so the ETA is the job's, estimated from the work done so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


class Job:
    """The whole job's line."""

    def __init__(self, total: float, enabled: bool):
        self.total, self.done = max(total, 1e-9), 0.0
        self.stage, self.label = "", ""
        self.began = self.drawn = time.monotonic()
        # A terminal redraws the line often; a log file gets a line every half minute.
        self.every = 0.2 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(total=1000, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc} {bar} {postfix}")

    def advance(self, weight: float, label: str | None = None, force: bool = False) -> None:
        self.done = min(self.total, self.done + weight)
        if label is not None:
            self.label = label
        now = time.monotonic()
        if not force and now - self.drawn < self.every:
            return
        self.drawn = now
        elapsed = now - self.began
        left = elapsed / self.done * (self.total - self.done) if self.done > 0 else None
        self.bar.set_description_str(f"lmsuite run: {self.stage}: {self.label}", refresh=False)
        self.bar.set_postfix_str(f"{_clock(elapsed)} elapsed, ETA "
                                 f"{'?' if left is None else _clock(left)}", refresh=False)
        self.bar.n = int(1000 * self.done / self.total)
        self.bar.refresh()

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


_job: Job | None = None


@contextmanager
def job(total: float, enabled: bool = True) -> Iterator[Job]:
    """Within: bars move one line for the job; `total` is the job's work in its units."""
    global _job
    previous, _job = _job, Job(total, enabled)
    try:
        yield _job
    finally:
        _job.bar.close()
        _job = previous


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Within: the job's line names this stage."""
    if _job is not None:
        _job.stage = name
        _job.advance(0.0, "", force=True)
    yield


class _JobBar:
    """A task's bar inside a job: moves the job's line, which shows the task, how far it is
    ("step 120/516") and what the task reports (loss, rate)."""

    def __init__(self, desc: str, weight: float, total: int, initial: int, unit: str):
        self.desc, self.weight, self.unit = desc, weight, unit
        self.total, self.n, self.postfix = total, initial, ""

    def _label(self) -> str:
        return f"{self.desc} {self.unit} {self.n}/{self.total} {self.postfix}".rstrip()

    def update(self, n: float = 1, weight: float | None = None) -> None:
        self.n += n
        _job.advance(n * (self.weight if weight is None else weight), self._label())

    def set_postfix(self, refresh: bool = True, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text
        _job.advance(0.0, self._label())

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str, enabled: bool = True, weight: float = 1.0,
        initial: int = 0):
    """A progress bar for `total` items (tqdm's: rate, ETA); inside a job, one that moves the
    job's line, each item worth `weight` of the job's work."""
    if _job is not None:
        return _JobBar(desc, weight, total, initial, unit)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
                dynamic_ncols=True)


def advance(bar, n: int = 1, weight: float | None = None) -> None:
    """Move `bar` by n items, each worth `weight` of the job's work (the bar's own weight by
    default)."""
    if isinstance(bar, _JobBar):
        bar.update(n, weight)
    else:
        bar.update(n)


def say(line: str) -> None:
    """A line above the job's (or on stderr)."""
    if _job is not None:
        _job.write(line)
    else:
        print(line, file=sys.stderr, flush=True)


# Work in FLOP-equivalents, so that the job's ETA weighs a big model's step above a small
# one's; a step also has fixed costs (dispatch, the optimizer, logging) whatever its size.
STEP_OVERHEAD = 5e8


def forward_work(parameters: int, tokens: int, calls: int = 1) -> float:
    """`calls` forward passes of `tokens` tokens in all through a model of `parameters`
    parameters (0 calls: the tokens of a pass counted on their own)."""
    return 2.0 * parameters * tokens + calls * STEP_OVERHEAD


def training_work(parameters: int, tokens: int) -> float:
    """A training step (forward and backward) on `tokens` tokens."""
    return 6.0 * parameters * tokens + 3 * STEP_OVERHEAD
