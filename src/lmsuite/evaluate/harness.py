"""lm-evaluation-harness on a checkpoint, offline: local task files, local tokenizer."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from lmsuite.errors import LmsuiteError
from lmsuite.evaluate.tasks import eval_items_dir

SHIPPED = ("lmsuite_lambada", "lmsuite_arithmetic")


def _task_dir(eval_dir: Path, into: Path) -> Path:
    """Copies of the shipped task YAMLs that point at `eval_dir`'s item files."""
    for name in SHIPPED:
        text = resources.files("lmsuite.evaluate").joinpath(f"harness_tasks/{name}.yaml")
        (into / f"{name}.yaml").write_text(text.read_text().replace("LMSUITE_EVAL_DIR",
                                                                      str(eval_dir.resolve())))
    return into


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise LmsuiteError("--harness needs lm-evaluation-harness "
                           "(pip install 'lmsuite[harness]')") from None
    return lm_eval


@functools.cache
def _registry():
    """lm-evaluation-harness's own tasks (indexing them takes some seconds: done once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def check_harness_tasks(tasks: list[str], data_dir: Path | None) -> None:
    """Refuse, before anything runs, a harness task that cannot run: lm-evaluation-harness
    missing, a shipped task without the built-in corpus's items, or a name that is neither a
    task of lm-evaluation-harness nor a task YAML file."""
    lm_eval = _lm_eval()
    for task in tasks:
        if task in SHIPPED:
            if eval_items_dir(data_dir) is None:
                raise LmsuiteError(f"harness task {task} needs a dataset folder built from the "
                                   "built-in corpus (--data)")
        elif not (Path(task).suffix in (".yaml", ".yml") and Path(task).is_file()
                  or task in _registry().all_tasks):
            raise LmsuiteError(f"harness task {task!r} is not a task of lm-evaluation-harness "
                               f"{lm_eval.__version__}, a task YAML file, nor one of lmsuite's "
                               f"({', '.join(SHIPPED)})")


def run_harness(folder: Path, task: str, data_dir: Path | None,
                batch_size: int = 16) -> list[tuple[str, float, int, float | None]]:
    """[(metric, value, n, stderr or None)] of one lm-evaluation-harness task on the HF
    folder `folder`.

    The shipped tasks (lmsuite_lambada, lmsuite_arithmetic) read the built-in corpus's items
    from `data_dir`; any other task name is looked up in lm-evaluation-harness's registry and
    must find its dataset in the local cache: nothing is downloaded.
    """
    check_harness_tasks([task], data_dir)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    tmp = Path(tempfile.mkdtemp(prefix="lmsuite-harness-"))
    try:
        if task in SHIPPED:  # self-contained: the harness's own tasks need no indexing
            manager = TaskManager(include_path=str(_task_dir(eval_items_dir(data_dir), tmp)),
                                  include_defaults=False)
        else:
            manager = _registry()
        import torch

        model = HFLM(pretrained=str(folder), tokenizer=str(folder), dtype="float32",
                     batch_size=batch_size, device="cuda" if torch.cuda.is_available() else "cpu")
        out = simple_evaluate(model=model, tasks=[task], task_manager=manager,
                              log_samples=False, verbosity="ERROR")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out is None or task not in out["results"]:
        raise LmsuiteError(f"lm-evaluation-harness gave no results for {task}")
    from lmsuite.evaluate.imports import task_metrics

    n = int(out["n-samples"][task]["effective"])
    return [(metric, value, n, stderr)
            for metric, value, stderr in task_metrics(out["results"][task])]
