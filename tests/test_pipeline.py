"""`lmsuite run` end to end on a micro suite: every stage's outputs and their agreement, and a
run killed at a random moment that, run again, ends where an uninterrupted one does."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmsuite.config import (
    DataConfig,
    ModelConfig,
    SuiteConfig,
    SyntheticConfig,
    TrainConfig,
    save_suite,
)
from lmsuite.pipeline import builtin_config, plan
from lmsuite.results import read_rows
from lmsuite.runs import list_steps
from lmsuite.train.schedule import checkpoint_steps

ROOT = Path(__file__).resolve().parents[1]


def micro_suite() -> SuiteConfig:
    return SuiteConfig(
        name="micro", seed=7,
        data=DataConfig(documents=300, vocab_size=512, seq_len=64, validation_fraction=0.05,
                        synthetic=SyntheticConfig(entities=20, eval_items=20,
                                                  second_operands=5, arithmetic_per_operand=1,
                                                  duplicate_share=0.2)),
        train=TrainConfig(batch_size=4, steps=16, checkpoint_every=8),
        models=[ModelConfig(name="m1", layers=1, d_model=32, heads=2, lr=4e-3),
                ModelConfig(name="m2", layers=2, d_model=32, heads=2, lr=4e-3)])


def lmsuite_run(config, out, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "lmsuite", "run", str(config), "--out",
                             str(out), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs)


def outputs(run: Path) -> dict:
    """What a run produced: weights, memorization flags, result rows (as sets)."""
    found = {}
    for path in sorted(run.glob("*/step*/model.safetensors")):
        found[str(path.relative_to(run))] = path.read_bytes()
    for path in sorted(run.glob("results/memorization/*/*.npz")):
        data = np.load(path)
        found[str(path.relative_to(run))] = {k: data[k].tobytes() for k in data.files}
    for path in sorted(run.glob("results/*.jsonl")):
        found[str(path.relative_to(run))] = {json.dumps(r, sort_keys=True)
                                             for r in read_rows(path)}
    return found


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    save_suite(micro_suite(), tmp / "micro.toml")
    proc = lmsuite_run(tmp / "micro.toml", tmp / "run")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return tmp, out


def test_every_stage_leaves_its_outputs_and_they_agree(straight):
    tmp, out = straight
    run, suite = tmp / "run", micro_suite()
    job = plan(suite)
    schedule = checkpoint_steps(16, 8)
    for folder in ("m1", "m1-deduped", "m2", "m2-deduped"):
        assert list_steps(run / folder) == schedule  # checkpoints = the schedule
    rows = list(read_rows(run / "results" / "eval.jsonl"))
    for folder, steps in job.eval_steps.items():
        model, _, deduped = folder.partition("-")
        dataset = "deduped" if deduped else "standard"
        for task, metrics in (("lambada", 2), ("perplexity", 3), ("pronouns", 6),
                              ("stereotypes", 2)):
            for step in steps:  # one row per checkpoint x task x metric
                got = [r for r in rows if (r["model"], r["dataset"], r["step"],
                                           r["task"]) == (model, dataset, step, task)]
                assert len(got) == metrics, (folder, step, task)
    for folder in ("m1", "m2-deduped"):  # a flags file per scanned checkpoint
        for step in job.memorization_steps:
            assert (run / "results" / "memorization" / folder / f"step{step}.npz").is_file()
    frequency = list(read_rows(run / "results" / "frequency.jsonl"))
    assert {r["step"] for r in frequency} == set(job.frequency_steps)
    branches = sorted(p.name for p in run.glob("*-swap-pronouns-*"))
    # the two largest over the last 7% of training, the largest also over the last 21%
    assert branches == ["m1-swap-pronouns-from15-deduped", "m2-swap-pronouns-from13-deduped",
                        "m2-swap-pronouns-from15-deduped"]
    index = run / "report" / "index.html"
    page = index.read_text()
    images = [line.split("'")[1] for line in page.split("<img src=")[1:]]
    assert images and all((run / "report" / name).is_file() for name in images)
    assert "Findings" in page and "not found" in page or "found" in page
    assert out.strip().splitlines()[-1] == f"report: {index}"


def test_a_run_killed_at_a_random_moment_continues_to_the_same_end(straight, tmp_path):
    tmp, _ = straight
    seconds = random.Random().uniform(3, 40)
    proc = lmsuite_run(tmp / "micro.toml", tmp_path / "run", start_new_session=True)
    time.sleep(seconds)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    again = lmsuite_run(tmp / "micro.toml", tmp_path / "run")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert outputs(tmp_path / "run") == outputs(tmp / "run"), f"killed after {seconds:.1f} s"


def test_the_built_in_suite_ships_in_the_package_as_configs_tiny_toml():
    assert builtin_config().read_bytes() == (ROOT / "configs" / "tiny.toml").read_bytes()
