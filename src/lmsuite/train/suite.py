"""Every size of a suite on both datasets: skip finished models, resume unfinished ones; where
deduplication removed nothing, train each size once and name it for both datasets."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from lmsuite.config import SuiteConfig
from lmsuite.durable import fsync_tree, replace_folder, temporary, write_file
from lmsuite.progress import say
from lmsuite.runs import (
    DATASETS,
    SUITE_CONSEQUENCE,
    Run,
    check_data_settings,
    check_existing,
    checkpoint_dir,
    is_finished,
    list_steps,
    model_folder_name,
    read_manifest,
)
from lmsuite.train.trainer import train


def datasets_identical(run: Run) -> bool:
    """Whether the standard and deduplicated datasets hold the same training samples
    (deduplication removed nothing, so the two models would be the same model)."""
    manifests = [read_manifest(run.dataset(d)) for d in DATASETS]
    return all(manifests) and manifests[0]["sha256"]["train.bin"] == \
        manifests[1]["sha256"]["train.bin"]


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
    identical = datasets_identical(run)
    speak = progress and os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks
    if identical and speak:
        say("lmsuite suite: deduplication removed no document, so the two datasets are the "
            "same: each size trains once, and its -deduped folder holds the same checkpoints")
    finished = [is_finished(run, suite, size.name, dataset) for size, dataset in runs]
    folders, began = [], time.perf_counter()
    for number, ((size, dataset), done) in enumerate(zip(runs, finished, strict=True), 1):
        if done:
            continue
        if identical and dataset == "deduped":
            folders.append(reuse_standard(run, size.name))
            continue
        if speak:  # where the suite stands, above the model's own progress bar
            say(f"lmsuite suite: {model_folder_name(size.name, dataset)}, model {number} of "
                f"{len(runs)} ({sum(finished) + len(folders)} finished; "
                f"{_minutes(time.perf_counter() - began)} so far)")
        folders.append(train(suite, size.name, dataset, run_dir, resume=True, progress=progress))
    return folders


def reuse_standard(run: Run, model: str) -> Path:
    """The deduplicated model's folder as the standard model's checkpoints (the same data gave
    the same weights): the weights hard-linked (copied where links cannot be made), each
    checkpoint's records naming the deduplicated dataset and the folder it is reused from."""
    source, target = run.model(model, "standard"), run.model(model, "deduped")
    target.mkdir(parents=True, exist_ok=True)
    for step in list_steps(source):
        final = checkpoint_dir(target, step)
        if final.exists():
            continue
        tmp = temporary(final)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir(source, step), tmp, copy_function=_link_or_copy)
        for record in (tmp / "provenance.json", tmp / "trainer_state" / "state.json"):
            if record.is_file():
                data = json.loads(record.read_text())
                record.unlink()  # a link to the standard model's record: not to be changed
                write_file(record, {**data, "dataset": "deduped", "reused_from": source.name})
        fsync_tree(tmp)
        replace_folder(tmp, final)
    if (source / "metrics.jsonl").is_file():
        write_file(target / "metrics.jsonl", (source / "metrics.jsonl").read_bytes())
    return target


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
