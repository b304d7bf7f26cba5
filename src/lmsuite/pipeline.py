"""`lmsuite run`: a suite from nothing to its report, in one resumable command.

Stages, each skipped where its work is done (so a run killed anywhere continues where it
stopped): the data (standard and deduplicated), every size trained on both, the evaluations
the figures need, memorization, term frequency, the pronoun intervention on the two largest
deduplicated models from the last 7% and 21% of training, and the report. One progress line
covers the whole job: stage, what runs, the job's ETA.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from lmsuite import progress
from lmsuite.config import SuiteConfig, load_suite, save_suite
from lmsuite.durable import write_file
from lmsuite.model.neox import config_for_size, count_parameters
from lmsuite.progress import forward_work, say, training_work
from lmsuite.runs import DATASETS, Run, default_run_dir, model_folder_name
from lmsuite.train.schedule import checkpoint_steps

BIAS_TASKS = ["lambada", "perplexity", "pronouns", "stereotypes"]
"""Evaluated at every checkpoint the figures draw (arithmetic and facts: by the frequency
study, at its steps)."""
INTERVENTION_FRACTIONS = (0.07, 0.21)
"""Pythia's forks: the last 7% of training, and the last 21%."""


def builtin_config() -> Path:
    """The built-in CPU suite, shipped inside the package (the same file as configs/tiny.toml)."""
    return Path(str(resources.files("lmsuite").joinpath("suites/tiny.toml")))


@dataclass
class Plan:
    """What the job does beyond training: which checkpoints each study reads."""

    suite: SuiteConfig
    eval_steps: dict[str, list[int]] = field(default_factory=dict)
    """Per model folder name, the checkpoints evaluated on BIAS_TASKS."""
    memorization_steps: list[int] = field(default_factory=list)
    frequency_steps: list[int] = field(default_factory=list)
    interventions: list[tuple[str, float]] = field(default_factory=list)
    """(size, fraction of training swapped) of each intervention."""


def plan(suite: SuiteConfig, builtin_items: bool = True) -> Plan:
    """The checkpoints each stage reads, chosen so that the figures have points along a log
    axis and the job fits its budget: step 0, the powers of 4 from 16, and the second half of
    training in quarters (where most changes); the memorization scan, whose cost is the samples
    seen, 16, 64 and the last step; term frequency at half of training and the end; for the
    models the intervention branches, more of the last eighth of training. The interventions,
    as Pythia's: the two largest sizes over the last 7% of training, the largest also over the
    last 21%."""
    t = suite.train
    schedule = checkpoint_steps(t.steps, t.checkpoint_every, t.log_checkpoints)

    def nearest(q: float) -> int:
        return min(schedule, key=lambda s: abs(s - q * t.steps))

    powers = [4**i for i in range(1, 16) if 4**i <= t.steps and 4**i in schedule]
    out = Plan(suite)
    out.memorization_steps = sorted({*powers[1:3], t.steps})
    out.frequency_steps = sorted({nearest(0.5), t.steps})
    if builtin_items:
        largest = [m.name for m in suite.models[-2:]]
        short, long = INTERVENTION_FRACTIONS
        out.interventions = [(name, short) for name in largest] + [(largest[-1], long)]
    forks = [t.steps - round(f * t.steps) for _, f in out.interventions]
    late = {nearest(q) for q in (0.875, 0.95, 1.0)} if forks else set()
    for size in suite.models:
        for dataset in DATASETS:
            name = model_folder_name(size.name, dataset)
            intervened = dataset == "deduped" and size.name in {n for n, _ in out.interventions}
            out.eval_steps[name] = sorted({0, *powers[1:], nearest(0.5), nearest(0.75),
                                           t.steps} | (late if intervened else set()))
    return out


def branch_steps(job: Plan, model: str, fork: int) -> list[int]:
    """The checkpoints of an intervention branch evaluated: its fork and the original's
    evaluated steps after it."""
    later = job.eval_steps[model_folder_name(model, "deduped")]
    return sorted({fork} | {s for s in later if s > fork})


def _work(job: Plan) -> float:
    """The job's work, in progress's units, to weigh its ETA."""
    suite, t = job.suite, job.suite.train
    tokens = t.batch_size * suite.data.seq_len
    params = {m.name: count_parameters(config_for_size(m, suite.data.vocab_size,
                                                       suite.data.seq_len))
              for m in suite.models}
    from lmsuite.data.build import DOCUMENT_WORK
    from lmsuite.evaluate.runner import TASK_TOKENS

    documents = suite.data.documents if suite.data.source == "synthetic" else 10_000
    work = documents * DOCUMENT_WORK
    for name, p in params.items():
        work += 2 * t.steps * training_work(p, tokens)
        for folder in (model_folder_name(name, d) for d in DATASETS):
            work += sum(forward_work(p, TASK_TOKENS[task], calls=10) for task in BIAS_TASKS) \
                * len(job.eval_steps.get(folder, []))
        work += 2 * sum(s * t.batch_size for s in job.memorization_steps) * \
            forward_work(p, 63, calls=0)
        work += 2 * len(job.frequency_steps) * sum(forward_work(p, TASK_TOKENS[task], calls=10)
                                                   for task in ("arithmetic", "facts"))
    for name, fraction in job.interventions:
        steps = round(fraction * t.steps) + t.checkpoint_every
        work += steps * training_work(params[name], tokens)
    return work


MATMUL = ("import time, torch\na, b = torch.randn(1024, 1024), torch.randn(1024, 1024)\n"
          "[a @ b for _ in range(3)]\nstart, n = time.perf_counter(), 0\n"
          "while time.perf_counter() - start < 0.5:\n    a @ b\n    n += 1\n"
          "print(2 * 1024**3 * n / (time.perf_counter() - start) / 1e9)")


def machine_rate() -> float | None:
    """This machine's 1024^3 fp32 product rate on PyTorch's default path (a fresh process),
    in GFLOP/s: the speed every timing is read against."""
    try:
        out = subprocess.run([sys.executable, "-c", MATMUL], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        return round(float(out), 1)
    except (subprocess.SubprocessError, ValueError, OSError):
        return None


class Timings:
    """Each stage's time in this invocation, added to the run's timings file at the end."""

    def __init__(self, run_folder: Run):
        self.path, self.stages = run_folder.timings, {}
        self.record = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
                       "machine": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "matmul_fp32_gflops": machine_rate()}
        self.began = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        with progress.stage(name):
            yield
        self.stages[name] = round(time.perf_counter() - start, 1)

    def save(self) -> None:
        previous = json.loads(self.path.read_text())["runs"] if self.path.is_file() else []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file(self.path, {"runs": [*previous, {**self.record, "stages": self.stages,
                                                    "total_s": round(time.perf_counter() -
                                                                     self.began, 1)}]})


def run(config: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
        show: bool = True) -> Path:
    """The whole job; returns the report's index.html."""
    from lmsuite.analysis.frequency import frequency
    from lmsuite.analysis.intervention import intervene
    from lmsuite.analysis.memorization import memorization
    from lmsuite.data.build import build_data
    from lmsuite.evaluate.runner import evaluate
    from lmsuite.evaluate.tasks import eval_items_dir
    from lmsuite.report import write_report
    from lmsuite.train.suite import train_suite

    suite = load_suite(config or builtin_config())
    run_folder = Run(out or default_run_dir(suite.name))
    builtin = suite.data.source == "synthetic"
    job = plan(suite, builtin)
    timings = Timings(run_folder)
    with progress.job(_work(job), enabled=show):
        with timings.stage("data"):
            build_data(suite, run_folder.data, progress=show)
        builtin = eval_items_dir(run_folder.dataset("standard")) is not None
        save_suite(suite, run_folder.config)
        with timings.stage("train"):
            train_suite(suite, run_folder.root, progress=show)
        with timings.stage("evaluate"):
            tasks = BIAS_TASKS if builtin else ["perplexity"]
            for name, steps in job.eval_steps.items():
                folder = run_folder.root / name
                if folder.is_dir():
                    evaluate(folder, tasks=tasks, steps=_steps(steps), progress=show)
        with timings.stage("memorization"):
            memorization(str(run_folder.root), steps=_steps(job.memorization_steps),
                         progress=show)
        if builtin:
            with timings.stage("term frequency"):
                frequency(str(run_folder.root), steps=_steps(job.frequency_steps),
                          progress=show)
        else:
            say("lmsuite run: term frequency and the intervention need the built-in corpus's "
                "evaluation items; left out")
        with timings.stage("intervention"):
            for name, fraction in job.interventions:
                folder = intervene(str(run_folder.root), name, dataset="deduped",
                                   from_fraction=fraction, progress=show)
                fork = suite.train.steps - round(fraction * suite.train.steps)
                evaluate(folder, tasks=BIAS_TASKS, steps=_steps(branch_steps(job, name, fork)),
                         progress=show)
        timings.save()  # before the report, which shows them
        with progress.stage("report"):
            index = write_report(run_folder.root)
    say(f"lmsuite run: done; the report is {index}")
    return index


def _steps(steps: list[int]) -> str:
    return ",".join(map(str, steps))
