"""What a study runs on: the models of a run folder, one model folder, or a real Pythia model
(a folder of its revisions step<N>/, or one HF folder) with the data it trained on.

For lmsuite's runs everything comes from the run folder: each model's dataset, its batch size
(the manifest) and its checkpoints. For anything else the data folder, batch size and
sequence length are given, as Pythia's are on the command line (`--data DIR --batch-size 1024
--seq-len 2048`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lmsuite.data.order import batch_size_of, open_train
from lmsuite.errors import LmsuiteError
from lmsuite.model.hf import resolve_model_folder
from lmsuite.runs import (
    STEP,
    Run,
    checkpoint_dir,
    choose_steps,
    has_weights,
    list_steps,
    parse_steps,
    read_provenance,
    split_model_folder,
)


@dataclass
class StudyModel:
    """One model a study runs on: its checkpoints, its training data, where results go."""

    folder: Path
    """The model folder (its step<N>/ checkpoints), or one HF folder (`steps` = [its step])."""
    name: str
    """The model folder's name: `<model>` or `<model>-deduped`."""
    suite: str | None
    model: str
    dataset: str | None
    steps: list[int]
    """The checkpoints chosen."""
    all_steps: list[int]
    """Every checkpoint the folder holds (the last is the end of training)."""
    data_dir: Path
    batch_size: int
    run: Run
    """Where results go: the run folder, or for a folder outside one, the folder above it."""

    @property
    def sample_len(self) -> int:
        return int(open_train(self.data_dir).sizes[0])

    def checkpoint(self, step: int) -> Path:
        if step not in self.all_steps:
            raise LmsuiteError(f"{self.folder}: no checkpoint at step {step}")
        return self.folder if self.all_steps == [step] and has_weights(self.folder) \
            else checkpoint_dir(self.folder, step)


def _check_data(data_dir: Path, seq_len: int | None) -> None:
    length = int(open_train(data_dir).sizes[0])
    if seq_len is not None and length != seq_len + 1:
        raise LmsuiteError(f"{data_dir}: training samples hold {length} tokens, not --seq-len "
                           f"{seq_len} + 1")


def _describe(folder: Path, steps: list[int]) -> tuple[str | None, str, str | None]:
    """(suite, model, dataset) from a checkpoint's provenance, or by Pythia's naming."""
    record = read_provenance(checkpoint_dir(folder, steps[-1])) if steps else None
    if record is not None:
        return record.get("suite"), record["model"], record.get("dataset")
    model, dataset = split_model_folder(folder.name)
    return None, model, dataset


def _is_branch(folder: Path) -> bool:
    steps = list_steps(folder)
    record = read_provenance(checkpoint_dir(folder, steps[-1])) if steps else None
    return bool(record and record.get("branch"))


def study_models(target: str | os.PathLike, steps: str = "log", data: str | None = None,
                 batch_size: int | None = None, seq_len: int | None = None) -> list[StudyModel]:
    """The models a study of `target` runs on, each with the checkpoints `steps` selects."""
    target = Path(target)
    if not target.is_dir():
        raise LmsuiteError(f"{target}: not a folder")
    spec = parse_steps(steps)
    run = Run(target)
    if list_steps(target) or has_weights(target):
        folders, run = [target], Run(target.parent)
    else:
        # The suite's own models: an intervention's branches are studied when named (their
        # folder as the target), so that a study of the run reads the same models whenever the
        # interventions ran.
        folders = [f for f in run.model_folders() if not _is_branch(f)]
        if not folders:
            raise LmsuiteError(f"{target}: no model folders with step<N>/ checkpoints and no HF "
                               "model folder")
    found = []
    for folder in folders:
        if list_steps(folder):
            held = list_steps(folder)
        else:  # one HF folder: a Pythia revision saved on its own, its step from its name
            match = STEP.match(resolve_model_folder(folder).name)
            if match is None:
                raise LmsuiteError(f"{folder}: a lone model folder needs its step in its name "
                                   "(step<N>), to know which samples it had seen")
            held = [int(match.group(1))]
        suite, model, dataset = _describe(folder, held if list_steps(folder) else [])
        if data is not None:
            data_dir = Path(data)
        elif dataset is not None and run.dataset(dataset).is_dir():
            data_dir = run.dataset(dataset)
        else:
            raise LmsuiteError(f"{folder}: no training data found beside it; pass --data (and "
                               "--batch-size, --seq-len for data without a manifest)")
        _check_data(data_dir, seq_len)
        chosen = choose_steps(held, spec)
        if isinstance(spec, set) and not set(spec) & set(held):
            raise LmsuiteError(f"{folder}: no checkpoint at steps {sorted(spec)}; it has "
                               f"{', '.join(map(str, held))}")
        found.append(StudyModel(folder, folder.name, suite, model, dataset, chosen, held,
                                data_dir, batch_size_of(data_dir, batch_size), run))
    return found
