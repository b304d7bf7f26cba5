"""Every size of a suite on both datasets: skip finished models, resume unfinished ones."""

from __future__ import annotations

import os
from pathlib import Path

from lmsuite.config import SuiteConfig
from lmsuite.train.trainer import DATASETS, check_finished, is_finished, train


def train_suite(suite: SuiteConfig, run_dir: str | os.PathLike,
                progress: bool = True) -> list[Path]:
    """Train (or finish) all 2 x len(models) runs of the suite; returns their folders.
    Finished models are checked first: one trained under other settings than the config's
    stops the suite before any training."""
    runs = [(size, dataset) for size in suite.models for dataset in DATASETS]
    todo = []
    for size, dataset in runs:
        if is_finished(Path(run_dir), suite, size.name, dataset):
            check_finished(Path(run_dir), suite, size, dataset)
        else:
            todo.append((size, dataset))
    return [train(suite, size.name, dataset, run_dir, resume=True, progress=progress)
            for size, dataset in todo]
