"""The run folder's one owner: where each dataset, model, checkpoint, result file, study and
report lives, which names may become folders, and the settings fingerprint a build or a
checkpoint carries and how it is checked against a config.

    runs/<suite>/                      (`Run`)
      data/standard/, data/deduped/    built datasets (manifest.json, train.bin, ...)
      <model>/, <model>-deduped/       one folder per model trained: step<N>/ checkpoints
      results/eval.jsonl               result rows (+ eval_items.jsonl)
      results/memorization/<model folder>/step<N>.npz
      results/frequency/               term counts and their rows
      report/index.html                the report
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from lmsuite.errors import ConfigError, DataFormatError, LmsuiteError

if TYPE_CHECKING:
    from lmsuite.config import ModelConfig, SuiteConfig

DATASETS = ("standard", "deduped")
"""The two datasets of a suite: the corpus as it is, and its near-deduplicated copy."""
DEDUPED_SUFFIX = "-deduped"
"""Pythia's naming: the model trained on the deduplicated data is `<model>-deduped`."""
DATA, RESULTS, REPORT, CONFIG = "data", "results", "report", "suite.toml"
RESERVED = (DATA, RESULTS, REPORT, CONFIG)
"""Names in a run folder that are not models."""
STEP = re.compile(r"^step(\d+)$")
"""A checkpoint folder: step<N>/, as lmsuite writes them and Pythia's revisions are named."""
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
"""The weight files an HF folder may hold: one safetensors file, safetensors shards with their
index (the larger Pythia models), or, in older Pythia revisions, a PyTorch pickle."""


def check_name(name: object, what: str) -> str:
    """`name` if it can be a folder of a run folder: a non-empty string, not "." or "..",
    without path separators, NUL or control characters, not hidden (lmsuite's temporaries
    are), not a checkpoint's name and not one of the run folder's own (data, results, report).
    An error naming `what` otherwise."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "a non-empty name"
    elif name in (".", "..") or name.startswith("."):
        problem = "a name that does not start with '.'"
    elif any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "a name without path separators or control characters"
    elif name in RESERVED or STEP.match(name):
        problem = (f"a name other than {', '.join(RESERVED)} or step<N> (the run folder's "
                   "own)")
    if problem:
        raise ConfigError(f"{what} must be {problem}, got {name!r}")
    return name


def model_folder_name(model: str, dataset: str) -> str:
    """`<model>` for the standard dataset, `<model>-deduped` for the deduplicated one."""
    check_dataset(dataset)
    return model if dataset == "standard" else model + DEDUPED_SUFFIX


def split_model_folder(name: str) -> tuple[str, str]:
    """(model, dataset) of a model folder's name, by Pythia's naming."""
    if name.endswith(DEDUPED_SUFFIX):
        return name.removesuffix(DEDUPED_SUFFIX), "deduped"
    return name, "standard"


def check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise LmsuiteError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    return dataset


def default_run_dir(suite_name: str) -> Path:
    """Where a suite's run goes without --out: runs/<suite>/ in the current directory."""
    return Path("runs") / check_name(suite_name, "name")


class Run:
    """A run folder. Every path it hands out is inside it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _inside(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        base = os.path.abspath(self.root)
        if os.path.commonpath([base, os.path.abspath(path)]) != base:
            raise LmsuiteError(f"{path}: outside the run folder {self.root}")
        return path

    @property
    def config(self) -> Path:
        """The suite config the run was last trained with (what `intervene` continues)."""
        return self._inside(CONFIG)

    @property
    def data(self) -> Path:
        """The folder of the built datasets."""
        return self._inside(DATA)

    def dataset(self, dataset: str) -> Path:
        return self._inside(DATA, check_dataset(dataset))

    def model(self, model: str, dataset: str) -> Path:
        """The folder of `model` trained on `dataset`."""
        return self._inside(model_folder_name(check_name(model, "model name"), dataset))

    def model_folders(self) -> list[Path]:
        """The folders in the run that hold checkpoints, sorted by name."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and p.name not in RESERVED and list_steps(p))

    @property
    def results(self) -> Path:
        return self._inside(RESULTS)

    @property
    def eval_results(self) -> Path:
        """The result rows of `lmsuite eval` (per-item rows beside it)."""
        return self._inside(RESULTS, "eval.jsonl")

    def study(self, name: str) -> Path:
        """The folder of one study's files (memorization, frequency, intervention)."""
        return self._inside(RESULTS, check_name(name, "study"))

    def study_results(self, name: str) -> Path:
        """The result rows of one study: results/<name>.jsonl."""
        return self._inside(RESULTS, f"{check_name(name, 'study')}.jsonl")

    def memorization(self, model_folder: str, step: int) -> Path:
        """One checkpoint's per-sample memorization flags."""
        return self._inside(RESULTS, "memorization", check_name(model_folder, "model folder"),
                            f"step{step}.npz")

    def memorization_summary(self, model_folder: str) -> Path:
        """A model's memorization counts per window of training order (the Poisson view)."""
        return self._inside(RESULTS, "memorization", check_name(model_folder, "model folder"),
                            "poisson.npz")

    def window_counts(self, dataset: str) -> Path:
        """How often each training sample's memorization window occurs in the dataset."""
        return self._inside(RESULTS, "memorization", f"window-counts-{check_dataset(dataset)}.npz")

    def term_counts(self, dataset: str) -> Path:
        """The frequency study's term counts at each checkpoint step of the dataset."""
        return self._inside(RESULTS, "frequency", f"counts-{check_dataset(dataset)}.json")

    def frequency_curves(self, model_folder: str) -> Path:
        """A model's accuracy per term against the term's count, at each step."""
        return self._inside(RESULTS, "frequency", f"{check_name(model_folder, 'model folder')}"
                            ".json")

    @property
    def timings(self) -> Path:
        """How long each stage of `lmsuite run` took, with the machine's speed beside it."""
        return self._inside(RESULTS, "timings.json")

    @property
    def report(self) -> Path:
        return self._inside(REPORT)


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a run folder: built data, or model folders with checkpoints."""
    run = Run(path)
    return run.data.is_dir() or bool(run.model_folders())


# --- checkpoints ------------------------------------------------------------------------


def checkpoint_dir(model_dir: str | os.PathLike, step: int) -> Path:
    return Path(model_dir) / f"step{step}"


def has_weights(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in WEIGHT_FILES)


def list_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps of the step<N>/ folders in `model_dir` that hold weights (lmsuite's checkpoints,
    renamed into place whole, and Pythia's revisions)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for path in model_dir.iterdir()
                  if (m := STEP.match(path.name)) and has_weights(path))


def parse_steps(spec: str) -> str | set[int]:
    """A `--steps` value: "all", "log" (0, powers of two and the last step) or a
    comma-separated list of steps."""
    if spec in ("all", "log"):
        return spec
    try:
        steps = {int(s) for s in spec.split(",") if s.strip()}
    except ValueError:
        steps = set()
    if not steps:
        raise LmsuiteError(f"--steps must be all, log or a list like 0,100,200; got {spec!r}")
    return steps


def choose_steps(steps: list[int], spec: str | set[int]) -> list[int]:
    """The checkpoints of `steps` (sorted) that `spec` (from `parse_steps`) selects."""
    if spec == "all":
        return steps
    if spec == "log":
        return [s for s in steps if s == 0 or s & (s - 1) == 0 or s == steps[-1]]
    return [s for s in steps if s in spec]


# --- records: manifest.json, provenance.json ----------------------------------------------


def read_json_object(path: str | os.PathLike, what: str) -> dict | None:
    """The JSON object in `path`, None when there is no such file; an error naming the file
    when it is not a JSON object. `what` says what it should be."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise DataFormatError(f"{path}: expected a JSON object ({what}), got "
                              f"{type(record).__name__}")
    return record


def read_manifest(data_dir: str | os.PathLike) -> dict | None:
    """A built dataset's manifest.json, None where there is none; one without the fields
    lmsuite reads is an error naming the field."""
    from lmsuite.data.verify import check_manifest_shape

    path = Path(data_dir) / "manifest.json"
    manifest = read_json_object(path, "a dataset's manifest")
    return None if manifest is None else check_manifest_shape(manifest, path)


def read_provenance(folder: str | os.PathLike) -> dict | None:
    """lmsuite's record beside a checkpoint's weights (`provenance.json`: suite, model,
    dataset, step, data hash, the settings it was trained with); None in a folder without one,
    such as Pythia's."""
    path = Path(folder) / "provenance.json"
    record = read_json_object(path, "a checkpoint's provenance")
    if record is not None and not isinstance(record.get("model"), str):
        raise DataFormatError(f'{path}: expected a JSON object naming its "model"')
    return record


# --- the settings fingerprint -------------------------------------------------------------


def samples_needed(suite: SuiteConfig) -> int:
    """Training samples a build must hold for the suite: steps x batch_size."""
    return suite.train.steps * suite.train.batch_size


def build_settings(suite: SuiteConfig) -> dict:
    """What a built dataset's contents depend on, besides its length. Its length (steps x
    batch_size samples) only appends: every epoch's order is fixed by the seed alone, so a
    longer build begins with the samples of a shorter one. The batch size is recorded so
    that `batch_at` can take it from the manifest."""
    return json.loads(json.dumps({"seed": suite.seed, "data": dataclasses.asdict(suite.data),
                                  "batch_size": suite.train.batch_size}))


NOT_TRAJECTORY = ("micro_batch_size", "checkpoint_every", "log_checkpoints", "keep_trainer_state",
                  "tensor_parallel", "activation_checkpointing")
"""Training settings that do not change what the next steps do to a model: the micro-batch
size and the tensor-parallel layout change results only by float rounding (a resume under
another layout says so); recomputing activations not at all; the checkpoint settings only what
is kept."""


def trajectory(suite: SuiteConfig, size: ModelConfig) -> dict:
    """The settings a checkpoint was trained under, as `section.field` -> value (JSON types):
    a run resumed under other values would not continue the run its checkpoints began."""
    settings = {"seed": suite.seed, "data.seq_len": suite.data.seq_len}
    settings.update({f"model.{k}": v for k, v in dataclasses.asdict(size).items()})
    settings.update({f"train.{k}": v for k, v in dataclasses.asdict(suite.train).items()
                     if k not in NOT_TRAJECTORY})
    return json.loads(json.dumps(settings))


def flat(params: dict, prefix: str = "") -> dict:
    """{"data": {"seq_len": 128}} -> {"data.seq_len": 128}."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def changed_settings(saved: dict, now: dict) -> str | None:
    """How settings recorded with a build or a checkpoint differ from the config's now, as
    "a = 1; the config now has a = 2", or None when they agree. Both are flat
    (`section.field` -> JSON value). A setting on one side only (a field another lmsuite
    version added or removed) is not compared, so an upgrade alone refuses nothing."""
    changed = [k for k in sorted(saved.keys() & now.keys()) if saved[k] != now[k]]
    if not changed:
        return None
    was = ", ".join(f"{k} = {saved[k]!r}" for k in changed)
    is_ = ", ".join(f"{k} = {now[k]!r}" for k in changed)
    return f"{was}; the config now has {is_}"


def check_data_settings(data: str | os.PathLike, suite: SuiteConfig) -> None:
    """An error when datasets in the data folder `data` exist, built with other settings than
    the suite's; it names each setting that differs."""
    now = flat(build_settings(suite))
    for name in DATASETS:
        manifest = read_manifest(Path(data) / name)
        params = (manifest or {}).get("params")
        changed = isinstance(params, dict) and changed_settings(flat(params), now)
        if changed:
            raise LmsuiteError(f"{Path(data) / name}: built with {changed}. Restore those "
                               "settings, or choose another --out (`lmsuite data build --force` "
                               "rebuilds it in place)")


RESUME_CONSEQUENCE = ("Resuming would not continue that run: restore those settings, or train "
                      "into another folder (--out)")
SUITE_CONSEQUENCE = ("The run folder's models would not all be trained as the config says: "
                     "restore those settings, or train the suite into another folder (--out)")


def check_same_training(where: Path, record: dict, suite: SuiteConfig, size: ModelConfig,
                        manifest: dict | None, consequence: str) -> None:
    """Refuse when a checkpoint's record (its state.json or provenance.json) says it was
    trained under other settings or on other data than the config and dataset give now;
    `consequence` says what that would break and what to do."""
    step = record.get("step")
    saved = record.get("trajectory")
    if isinstance(saved, dict):
        changed = changed_settings(saved, trajectory(suite, size))
        if changed:
            raise LmsuiteError(f"{where}: step {step} was trained with {changed}. {consequence}")
    sha = record.get("train_bin_sha256")
    if manifest is None or sha is None:
        return
    # A build with the same settings but more samples begins with the same samples (see
    # build_settings), so only a train.bin of the same length must hash the same.
    same_length = record.get("train_samples") in (None, manifest["counts"]["train_samples"])
    if sha != manifest["sha256"]["train.bin"] and same_length:
        raise LmsuiteError(f"{where}: step {step} was trained on a train.bin with sha256 {sha}; "
                           f"the dataset's is now {manifest['sha256']['train.bin']}. "
                           f"{consequence}")


def check_existing(run: Run, suite: SuiteConfig, size: ModelConfig, dataset: str,
                   consequence: str) -> None:
    """The newest checkpoint of a model in a run folder, if it has one, was trained as the
    config says (its provenance.json tells; the data is compared when it is built). Cheap: it
    reads JSON only, so it runs before anything is built or trained."""
    model_dir = run.model(size.name, dataset)
    saved = list_steps(model_dir)
    newest = checkpoint_dir(model_dir, saved[-1]) if saved else None
    record = read_provenance(newest) if newest is not None else None
    if record is not None:
        check_same_training(newest / "provenance.json", record, suite, size,
                            read_manifest(run.dataset(dataset)), consequence)


def is_finished(run: Run, suite: SuiteConfig, model: str, dataset: str) -> bool:
    """Whether the model's last checkpoint is in place."""
    return suite.train.steps in list_steps(run.model(model, dataset))
