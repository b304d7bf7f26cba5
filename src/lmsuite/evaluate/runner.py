"""`lmsuite eval`: every task on every chosen checkpoint of a run, a model or an HF folder."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from lmsuite import speedups
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.errors import LmsuiteError
from lmsuite.evaluate.tasks import TASKS, Context, eval_items_dir, read_lambada
from lmsuite.model.hf import load_model, resolve_model_folder
from lmsuite.progress import advance, bar, forward_work, say
from lmsuite.results import ResultStore, Source
from lmsuite.runs import (
    STEP,
    Run,
    checkpoint_dir,
    choose_steps,
    list_steps,
    parse_steps,
    read_provenance,
    split_model_folder,
)

DEFAULT_TASKS = ("lambada", "perplexity", "arithmetic", "facts", "pronouns", "stereotypes")


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    source: Source


def _model_checkpoints(model_dir: Path, spec) -> list[Checkpoint]:
    found = []
    for step in choose_steps(list_steps(model_dir), spec):
        folder = checkpoint_dir(model_dir, step)
        provenance = read_provenance(folder)
        if provenance is not None:
            source = Source(provenance.get("suite"), provenance["model"],
                            provenance.get("dataset"), step)
        else:  # Pythia's revisions: the folder's name says the dataset
            model, dataset = split_model_folder(model_dir.name)
            source = Source(None, model, dataset, step)
        found.append(Checkpoint(folder, source))
    return found


def _external(folder: Path) -> Checkpoint:
    """Any HF GPT-NeoX folder: named after itself (or its HF cache repo), step from its name."""
    resolved = resolve_model_folder(folder)
    match = STEP.match(resolved.name)
    name = folder.name.split("--")[-1] if folder.name.startswith("models--") else folder.name
    if match and name == resolved.name:
        name = resolved.parent.name
    return Checkpoint(resolved, Source(None, name, None, int(match.group(1)) if match else None))


def resolve_target(target: str | os.PathLike, spec) -> tuple[list[Checkpoint], Path | None, Path]:
    """(checkpoints, data folder, default results file) for a run folder, one model folder,
    or any HF GPT-NeoX folder."""
    target = Path(target)
    if not target.is_dir():
        raise LmsuiteError(f"{target}: not a folder")
    if list_steps(target):  # one model of a run, or of Pythia's revisions
        run = Run(target.parent)
        data = run.dataset("standard")
        return (_model_checkpoints(target, spec), (data if data.is_dir() else None),
                run.eval_results)
    run = Run(target)
    models = run.model_folders()
    if models:  # a run folder
        checkpoints = [c for m in models for c in _model_checkpoints(m, spec)]
        data = run.dataset("standard")
        return checkpoints, (data if data.is_dir() else None), run.eval_results
    return [_external(target)], None, Run(target.parent).eval_results


def _check_steps_held(target, spec: set[int], checkpoints: list[Checkpoint]) -> None:
    """A step asked for that no model holds (a typo, or a step off the checkpoint schedule) is
    an error rather than skipped; one that only some models hold yet (a run still training)
    is not."""
    held = {c.source.step for c in checkpoints}
    missing = sorted(spec - held)
    if missing and None not in held:
        every = sorted({c.source.step for c in resolve_target(target, "all")[0]})
        which = (f"step {missing[0]}" if len(missing) == 1 else
                 f"steps {', '.join(map(str, missing))}")
        raise LmsuiteError(f"{target}: no checkpoint at {which}; checkpoints are at steps "
                           f"{', '.join(map(str, every))}")


# Tasks that read the built-in corpus's held-out items (corpus.meta/eval/ of a dataset folder);
# lambada does only without --lambada.
NEEDS_ITEMS = ("lambada", "arithmetic", "facts", "pronouns", "stereotypes")


def _tasks_that_apply(tasks: list[str], chosen: bool, data_dir: Path | None,
                      lambada_file, harness: bool) -> list[str]:
    """The tasks that can run with this data. Tasks chosen by name that cannot are an error;
    of the default tasks they are left out, with a line that says so, unless that leaves
    nothing to run (no harness task either): then that is the error."""
    items = eval_items_dir(data_dir) is not None

    def applies(task: str) -> bool:
        if task == "lambada" and lambada_file is not None:
            return True
        return items if task in NEEDS_ITEMS else data_dir is not None

    left_out = [t for t in tasks if not applies(t)]
    if not left_out:
        return tasks
    why = ("no dataset folder (pass --data)" if data_dir is None else
           f"{data_dir} was not built from the built-in corpus, whose items they read")
    if chosen:
        raise LmsuiteError(f"{', '.join(left_out)}: cannot run, {why}; perplexity runs on any "
                           "dataset folder, lambada on --lambada FILE")
    if len(left_out) == len(tasks) and not harness:
        raise LmsuiteError(f"no task can run: {why}; perplexity runs on any dataset folder, "
                           "lambada on --lambada FILE")
    say(f"lmsuite eval: leaving out {', '.join(left_out)}: {why}")
    return [t for t in tasks if applies(t)]


class _Tokenizers:
    """One tokenizer object per distinct tokenizer.json, so that what is encoded with it at one
    checkpoint is reused at the next (`scoring.encode_pair` keeps it per object)."""

    def __init__(self) -> None:
        self.by_text: dict[str, object] = {}

    def get(self, folder: Path):
        text = (folder / "tokenizer.json").read_text(encoding="utf-8") \
            if (folder / "tokenizer.json").is_file() else str(folder)
        if text not in self.by_text:
            self.by_text[text] = load_tokenizer(folder)
        return self.by_text[text]


TASK_TOKENS = {"lambada": 45000, "perplexity": 12000, "arithmetic": 60000, "facts": 6000,
               "pronouns": 35000, "stereotypes": 6000}
"""Tokens each task scores, about, on the built-in items (the job's ETA weighs by them)."""


@functools.lru_cache(maxsize=256)
def _parameters(folder: Path) -> int:
    from lmsuite.model.hf import read_model_config
    from lmsuite.model.neox import count_parameters

    return count_parameters(read_model_config(folder))


def task_work(folder: Path, task: str) -> float:
    """The work of one task on one checkpoint, for progress."""
    name = task.split(":")[0]
    # a task's forward passes, and loading, encoding and the like: as ten of them
    return forward_work(_parameters(folder), TASK_TOKENS.get(name, 50000), calls=10)


def _row(source: Source, task: str, metric: str, value: float, n: int,
         stderr: float | None = None) -> dict:
    """A result row; with the standard error of the value where the task gives one."""
    extra = {} if stderr is None else {"stderr": stderr}
    return source.row(task, metric, value, n, **extra)


def evaluate(target: str | os.PathLike, tasks: list[str] | None = None, steps: str = "all",
             results: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
             lambada_file: str | os.PathLike | None = None, harness: list[str] | None = None,
             progress: bool = True) -> Path:
    """Evaluate each chosen checkpoint on each task, appending rows to the results file and
    skipping (checkpoint, task) pairs already there. Returns the results file."""
    chosen = tasks is not None
    tasks = list(DEFAULT_TASKS if tasks is None else tasks)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise LmsuiteError(f"unknown task {unknown[0]!r}; tasks are {sorted(TASKS)}")
    spec = parse_steps(steps)
    checkpoints, data_dir, default_results = resolve_target(target, spec)
    if isinstance(spec, set):
        _check_steps_held(target, spec, checkpoints)
    if data is not None:
        data_dir = Path(data)
        if not (data_dir / "manifest.json").is_file():
            raise LmsuiteError(f"{data_dir}: not a dataset folder (no manifest.json)")
    if not checkpoints:
        raise LmsuiteError(f"{target}: no checkpoints match --steps {steps}")
    tasks = _tasks_that_apply(tasks, chosen, data_dir, lambada_file, bool(harness))
    if lambada_file is not None and "lambada" in tasks:
        read_lambada(lambada_file)  # a bad file is an error before any model is loaded
    if harness:
        from lmsuite.evaluate.harness import check_harness_tasks

        check_harness_tasks(harness, data_dir)
    store = ResultStore(results or default_results)
    # Rows on another LAMBADA file must not pass for rows on the built-in items.
    label = {t: t for t in tasks}
    if lambada_file is not None and "lambada" in label:
        label["lambada"] = f"lambada:{Path(lambada_file).stem}"
    names = [label[t] for t in tasks] + [f"harness:{h}" for h in harness or []]
    task_of = {v: k for k, v in label.items()}
    work = [(c, t) for c in checkpoints for t in names if not store.done(c.source, t)]
    shown = bar(len(work), "eval", "task", enabled=progress)
    loaded: tuple[Path, Context] | None = None
    said: set[str] = set()
    tokenizers = _Tokenizers()
    for checkpoint, task in work:
        step = checkpoint.source.step
        where = checkpoint.source.model + ("" if step is None else f" step {step}")
        shown.set_postfix_str(f"{where} {task}", refresh=False)
        if task.startswith("harness:"):
            from lmsuite.evaluate.harness import run_harness

            rows = run_harness(checkpoint.folder, task.removeprefix("harness:"), data_dir)
            store.add(checkpoint.source, task, [
                checkpoint.source.row(task, m, v, n, **({} if e is None else {"stderr": e}))
                for m, v, n, e in rows])
        else:
            if loaded is None or loaded[0] != checkpoint.folder:
                model = load_model(checkpoint.folder)
                speedups.attach(model)
                loaded = (checkpoint.folder, Context(
                    model, tokenizers.get(checkpoint.folder), model.config.max_positions,
                    data_dir, Path(lambada_file) if lambada_file else None, said))
            summary, items = TASKS[task_of[task]](loaded[1])
            store.add(checkpoint.source, task, [_row(checkpoint.source, task, *r)
                                                for r in summary],
                      [checkpoint.source.row(task, m, v, 1, item=item) for item, m, v in items])
        advance(shown, 1, task_work(checkpoint.folder, task))
    shown.close()
    return store.path

