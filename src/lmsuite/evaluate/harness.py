"""lm-evaluation-harness on a checkpoint, offline: local task files, local tokenizer."""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from lmsuite.errors import LmsuiteError

SHIPPED = ("lmsuite_lambada", "lmsuite_arithmetic")


def _task_dir(eval_dir: Path, into: Path) -> Path:
    """Copies of the shipped task YAMLs that point at `eval_dir`'s item files."""
    for name in SHIPPED:
        text = resources.files("lmsuite.evaluate").joinpath(f"harness_tasks/{name}.yaml")
        (into / f"{name}.yaml").write_text(text.read_text().replace("LMSUITE_EVAL_DIR",
                                                                      str(eval_dir.resolve())))
    return into


def run_harness(folder: Path, task: str, data_dir: Path | None,
                batch_size: int = 16) -> list[tuple[str, float, int]]:
    """[(metric, value, n)] of one lm-evaluation-harness task on the HF folder `folder`.

    The shipped tasks (lmsuite_lambada, lmsuite_arithmetic) read the built-in corpus's items
    from `data_dir`; any other task name is looked up in lm-evaluation-harness's registry and
    must find its dataset in the local cache: nothing is downloaded.
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LmsuiteError("--harness needs lm-evaluation-harness "
                           "(pip install 'lmsuite[harness]')") from None
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    tmp = Path(tempfile.mkdtemp(prefix="lmsuite-harness-"))
    try:
        include = None
        if task in SHIPPED:
            if data_dir is None or not (data_dir / "corpus.meta" / "eval").is_dir():
                raise LmsuiteError(f"harness task {task} needs a dataset folder built from the "
                                   "built-in corpus (--data)")
            include = str(_task_dir(data_dir / "corpus.meta" / "eval", tmp))
        import torch

        model = HFLM(pretrained=str(folder), tokenizer=str(folder), dtype="float32",
                     batch_size=batch_size, device="cuda" if torch.cuda.is_available() else "cpu")
        out = simple_evaluate(model=model, tasks=[task], task_manager=TaskManager(
            include_path=include), log_samples=False, verbosity="ERROR")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out is None or task not in out["results"]:
        raise LmsuiteError(f"lm-evaluation-harness gave no results for {task}")
    n = int(out["n-samples"][task]["effective"])
    rows = []
    for key, value in sorted(out["results"][task].items()):
        metric, _, _ = key.partition(",")
        if metric == "alias" or metric.endswith("_stderr") or not isinstance(value, int | float):
            continue
        rows.append((metric, float(value), n))
    return rows
