"""Every size of a suite on both datasets: skip finished models, resume unfinished ones."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lmsuite.config import SuiteConfig
from lmsuite.runs import (
    DATASETS,
    SUITE_CONSEQUENCE,
    Run,
    check_data_settings,
    check_existing,
    is_finished,
    model_folder_name,
)
from lmsuite.train.trainer import train


def train_suite(suite: SuiteConfig, run_dir: str | os.PathLike,
                progress: bool = True) -> list[Path]:
    """Train (or finish) all 2 x len(models) runs of the suite on its built data; returns their
    folders. The data and models already there are checked first: data built or a model
    trained under other settings than the config's stops the suite before anything is
    trained."""
    run = Run(run_dir)
    check_data_settings(run.data, suite)
    runs = [(size, dataset) for size in suite.models for dataset in DATASETS]
    for size, dataset in runs:
        check_existing(run, suite, size, dataset, SUITE_CONSEQUENCE)
    finished = [is_finished(run, suite, size.name, dataset) for size, dataset in runs]
    say = progress and os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks
    folders, began = [], time.perf_counter()
    for number, ((size, dataset), done) in enumerate(zip(runs, finished, strict=True), 1):
        if done:
            continue
        if say:  # where the suite stands, above the model's own progress bar
            print(f"lmsuite suite: {model_folder_name(size.name, dataset)}, model {number} of "
                  f"{len(runs)} ({sum(finished) + len(folders)} finished; "
                  f"{_minutes(time.perf_counter() - began)} so far)", file=sys.stderr, flush=True)
        folders.append(train(suite, size.name, dataset, run_dir, resume=True, progress=progress))
    return folders


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
