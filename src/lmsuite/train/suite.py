"""Every size of a suite on both datasets: skip finished models, resume unfinished ones."""

from __future__ import annotations

import os
from pathlib import Path

from lmsuite.config import SuiteConfig
from lmsuite.data.build import check_settings
from lmsuite.train.trainer import DATASETS, SUITE_CONSEQUENCE, check_existing, is_finished, train


def train_suite(suite: SuiteConfig, run_dir: str | os.PathLike,
                progress: bool = True) -> list[Path]:
    """Train (or finish) all 2 x len(models) runs of the suite; returns their folders.
    The data and models already there are checked first: data built or a model trained under
    other settings than the config's stops the suite before anything is built or trained."""
    check_settings(Path(run_dir) / "data", suite)
    runs = [(size, dataset) for size in suite.models for dataset in DATASETS]
    for size, dataset in runs:
        check_existing(Path(run_dir), suite, size, dataset, SUITE_CONSEQUENCE)
    todo = [(size, dataset) for size, dataset in runs
            if not is_finished(Path(run_dir), suite, size.name, dataset)]
    return [train(suite, size.name, dataset, run_dir, resume=True, progress=progress)
            for size, dataset in todo]
