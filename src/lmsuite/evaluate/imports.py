"""Results of lm-evaluation-harness from anywhere, as lmsuite's rows: the harness's current
JSON (what `eval --harness` runs) and the older one Pythia's published files use, and Pythia's
term-frequency CSVs. Any harness run, OPT's, BLOOM's, Pythia's or a user's, lands in the same
table as lmsuite's own evaluations, the same names for the same things.

A row: {suite, model, dataset, step, task, metric, value, n, stderr}. The task is named as
`eval --harness` names it (`harness:<task>`, with `_<k>shot` when k > 0); the metric loses the
harness's filter suffix ("acc,none" -> "acc") and takes lmsuite's name where the two differ.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from lmsuite import runs
from lmsuite.errors import DataFormatError, LmsuiteError
from lmsuite.results import ResultStore, Source

METRIC_NAMES = {"likelihood_difference": "likelihood_diff", "perplexity": "ppl"}
"""The harness's metric names (old and new) -> lmsuite's, so that published and measured
values of one thing share a name."""
STEP_IN_NAME = re.compile(r"step(\d+)")
REVISION = re.compile(r"revision=step(\d+)")
PRETRAINED = re.compile(r"pretrained=([^,]+)")
PYTHIA_NAME = re.compile(r"^(?P<intervention>intervention-)?pythia(?:-v1\.1)?-(?P<size>[\d.]+[mb])"
                         r"(?P<bf16>-bf16)?(?P<deduped>-deduped)?(?P<long>-long)?$")
PYTHIA_OLD_SIZES = {"125m": "160m", "350m": "410m", "800m": "1b", "1.3b": "1.4b",
                    "2.7b": "2.8b", "6.7b": "6.9b", "13b": "12b"}
"""The Pythia sizes' names before 2023 (the term-frequency CSVs use them) -> today's."""


def metric_name(key: str) -> str:
    """A harness result key as lmsuite's metric: "acc,none" -> "acc", "ppl" -> "ppl"."""
    metric = key.partition(",")[0]
    return METRIC_NAMES.get(metric, metric)


def task_metrics(metrics: dict) -> list[tuple[str, float, float | None]]:
    """[(metric, value, stderr or None)] of one task's harness results, in lmsuite's names: the
    filter suffix dropped, stderr paired with its metric, bookkeeping (alias, sample_len) left
    out. `eval --harness` and `import lm-eval` both read results through this."""
    out = []
    for key, value in sorted(metrics.items()):
        metric = key.partition(",")[0]
        if (metric in ("alias", "sample_len") or metric.endswith("_stderr")
                or not isinstance(value, int | float) or isinstance(value, bool)):
            continue  # sample_len is the item count, which every row carries as n
        stderr = metrics.get(f"{metric}_stderr" + key[len(metric):])
        out.append((metric_name(metric), float(value),
                    float(stderr) if isinstance(stderr, int | float) else None))
    return out


def pythia_model(pretrained: str) -> tuple[str, str] | None:
    """(model, dataset) of a Pythia model named as the harness ran it, or None:
    "EleutherAI/pythia-v1.1-1b-bf16" -> ("pythia-1b", "standard"),
    "EleutherAI/intervention-pythia-v1.1-410m-deduped" -> ("pythia-410m-intervention",
    "deduped"); "-long" (the intervention over the last 21% of training) is kept."""
    match = PYTHIA_NAME.match(pretrained.rsplit("/", 1)[-1])
    if match is None:
        return None
    model = f"pythia-{match['size']}"
    if match["intervention"]:
        model += "-intervention" + ("-long" if match["long"] else "")
    return model, "deduped" if match["deduped"] else "standard"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path}: not an lm-evaluation-harness result file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise DataFormatError(f'{path}: expected a JSON object with "results" (task -> '
                              "metric -> value), as lm-evaluation-harness writes")
    return data


def rows_of_file(path: str | os.PathLike, model: str | None = None, dataset: str | None = None,
                 suite: str | None = None, step_from_name: bool = False) -> list[dict]:
    """The rows of one harness result file. The model and step come from the file's
    `config.model_args` (pretrained=...,revision=step<N>), or the step from the file's name
    with `step_from_name`; `model` and `dataset` given override them."""
    path = Path(path)
    data = _read(path)
    config = data.get("config") or {}
    args = str(config.get("model_args") or "")
    found = STEP_IN_NAME.search(path.stem) if step_from_name else REVISION.search(args)
    if found is None:
        raise DataFormatError(f"{path}: no step in " + ("its name" if step_from_name else
                                                       "config.model_args (revision=step<N>); "
                                                       "pass --step-from-name"))
    step = int(found.group(1))
    named = PRETRAINED.search(args)
    guessed = pythia_model(named.group(1)) if named else None
    if model is None:
        if guessed is None and named is None:
            raise DataFormatError(f"{path}: no model in config.model_args; pass --model")
        model = guessed[0] if guessed else named.group(1).rsplit("/", 1)[-1]
    if dataset is None:
        dataset = guessed[1] if guessed else runs.split_model_folder(model)[1]
    n_samples = data.get("n-samples") or {}
    per_task_config = data.get("configs") or {}
    out = []
    for task, metrics in sorted(data["results"].items()):
        if not isinstance(metrics, dict):
            raise DataFormatError(f"{path}: results.{task} is not an object of metrics")
        shots = (per_task_config.get(task) or {}).get("num_fewshot", config.get("num_fewshot"))
        name = f"harness:{task}" + (f"_{int(shots)}shot" if shots else "")
        n = (n_samples.get(task) or {}).get("effective")
        source = Source(suite, model, dataset, step)
        for metric, value, stderr in task_metrics(metrics):
            extra = {} if stderr is None else {"stderr": stderr}
            out.append(source.row(name, metric, value, n, **extra))
    return out


def rows_of_term_frequency_csv(path: str | os.PathLike, suite: str | None = "pythia") -> list:
    """The rows of one of Pythia's term-frequency CSVs (model, checkpoint, task, fewshot, acc,
    acc_stderr): accuracy per first operand x1 (task `..._<x1>`) and shot count."""
    path = Path(path)
    out = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for number, record in enumerate(csv.DictReader(f), 2):
                try:
                    name = record["model"].rsplit("/", 1)[-1]
                    base, dataset = runs.split_model_folder(name)
                    size = base.removeprefix("pythia-")
                    model = f"pythia-{PYTHIA_OLD_SIZES.get(size, size)}"
                    x1 = int(record["task"].rsplit("_", 1)[1])
                    step, shots = int(record["checkpoint"]), int(record["fewshot"])
                    value, stderr = float(record["acc"]), float(record["acc_stderr"])
                except (KeyError, ValueError, IndexError, AttributeError):
                    raise DataFormatError(f"{path}:{number}: expected model, checkpoint, task "
                                          "(..._<x1>), fewshot, acc, acc_stderr") from None
                source = Source(suite, model, dataset, step)
                out.append(source.row(f"term_frequency:{shots}shot", f"acc_x1_{x1}", value,
                                      None, stderr=stderr))
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: unreadable ({e})") from None
    return out


def pythia_files(folder: str | os.PathLike) -> list[Path]:
    """Every result file of a copy of Pythia's `evals/` folder: pythia-v1/*/{zero-shot,
    intervention}/*.json and csv/*/*.csv."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LmsuiteError(f"{folder}: not a folder")
    found = sorted(folder.glob("pythia-v1/*/*/*.json")) + sorted(folder.glob("csv/*/*.csv"))
    if not found:
        raise LmsuiteError(f"{folder}: no pythia-v1/<model>/<kind>/*.json or csv/*/*.csv "
                           "files; expected a copy of Pythia's evals/ folder")
    return found


def rows_of_files(files: list[str | os.PathLike], model: str | None = None,
                  dataset: str | None = None, suite: str | None = None,
                  step_from_name: bool = False) -> list[dict]:
    """The rows of result files and term-frequency CSVs."""
    out = []
    for path in map(Path, files):
        out += (rows_of_term_frequency_csv(path, suite) if path.suffix == ".csv" else
                rows_of_file(path, model, dataset, suite, step_from_name))
    return out


def import_files(files: list[str | os.PathLike], results: str | os.PathLike,
                 model: str | None = None, dataset: str | None = None,
                 suite: str | None = None, step_from_name: bool = False) -> tuple[int, int]:
    """Add the rows of `files` to the results file, skipping (model, step, task) already
    there; (rows added, files read)."""
    by_key: dict[tuple, list[dict]] = {}
    for row in rows_of_files(files, model, dataset, suite, step_from_name):
        by_key.setdefault((row["suite"], row["model"], row["dataset"], row["step"],
                           row["task"]), []).append(row)
    entries = [(Source(s, m, d, step), task, rows)
               for (s, m, d, step, task), rows in by_key.items()]
    return ResultStore(results).add_all(entries), len(files)
