"""Data parallel training on the CPU: 2 gloo processes against 1 process."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from lmsuite.config import save_suite
from lmsuite.data.order import batch_at
from lmsuite.model import read_model_config
from lmsuite.train.checkpoint import list_checkpoints
from lmsuite.train.trainer import Trainer
from tests.conftest import (
    assert_weights_close,
    recording_batches,
    run_dir_with_data,
    training_suite,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_recording(suite, run_dir, record: str, fsdp: bool = False) -> None:
    """Train s1 on the standard data, writing {step: rows this process trained on}."""
    with recording_batches() as seen:
        Trainer(suite, "s1", "standard", run_dir, fsdp=fsdp, progress=False).run()
    with open(record, "w") as f:
        json.dump(seen, f)


def _worker(rank, world, port, suite, run_dir, record_dir, fsdp):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train_recording(suite, run_dir, f"{record_dir}/rank{rank}.json", fsdp)


def spawn(world, suite, run_dir, record_dir, fsdp=False):
    mp.spawn(_worker, args=(world, free_port(), suite, run_dir, record_dir, fsdp),
             nprocs=world, join=True)


def weights(run_dir, step):
    return load_file(run_dir / "s1" / f"step{step}" / "model.safetensors")


def test_two_processes_train_on_the_same_samples_as_one(built_data, tmp_path):
    suite = training_suite(built_data, steps=10, micro_batch_size=2)
    single = run_dir_with_data(built_data, tmp_path / "single")
    train_recording(suite, single, str(tmp_path / "single.json"))
    double = run_dir_with_data(built_data, tmp_path / "double")
    spawn(2, suite, double, str(tmp_path))
    one = json.loads((tmp_path / "single.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    data = single / "data" / "standard"
    for step in map(str, range(10)):
        rows = batch_at(data, int(step)).tolist()
        assert one[step] == rows
        assert ranks[0][step] == rows[:4] and ranks[1][step] == rows[4:]
    cfg = read_model_config(single / "s1" / "step10")
    assert_weights_close(weights(single, 10), weights(double, 10), cfg)
    # Only rank 0 writes: one metrics row per step.
    assert len((double / "s1" / "metrics.jsonl").read_text().splitlines()) == 10


@pytest.fixture(scope="module")
def straight(built_data, tmp_path_factory):
    """The suite file of s1 trained 10 steps in micro-batches of 4, and its run trained so by
    one process."""
    tmp = tmp_path_factory.mktemp("straight")
    suite = training_suite(built_data, steps=10, micro_batch_size=4)
    config = tmp / "suite.toml"
    save_suite(suite, config)
    single = run_dir_with_data(built_data, tmp / "single")
    Trainer(suite, "s1", "standard", single, progress=False).run()
    return config, single


def torchrun(config, run_dir, procs, *flags) -> subprocess.CompletedProcess:
    """`lmsuite train` of s1 under torchrun with `procs` processes."""
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
         "--master_port", str(free_port()), "-m", "lmsuite", "train", str(config), "--model",
         "s1", "--out", str(run_dir), "--no-progress", *flags],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def torchrun_fsdp(config, run_dir, *flags):
    """Two processes, the model sharded with FSDP2."""
    torchrun(config, run_dir, 2, "--fsdp", *flags)


def test_torchrun_fsdp_matches_one_process(built_data, straight, tmp_path):
    config, single = straight
    sharded = run_dir_with_data(built_data, tmp_path / "sharded")
    torchrun_fsdp(config, sharded)
    cfg = read_model_config(single / "s1" / "step10")
    for step in (0, 4, 10):
        assert_weights_close(weights(single, step), weights(sharded, step), cfg)


def test_a_run_resumes_under_another_world_size_with_fsdp(built_data, straight, tmp_path):
    # A job restarted on another number of devices: a checkpoint written by one process
    # resumes under two sharded ones and ends where one process training straight does.
    config, single = straight
    resumed = run_dir_with_data(built_data, tmp_path / "resumed")
    shutil.copytree(single / "s1", resumed / "s1")
    for step in list_checkpoints(resumed / "s1"):
        if step > 4:  # as if killed after step 4's checkpoint
            shutil.rmtree(resumed / "s1" / f"step{step}")
    torchrun_fsdp(config, resumed, "--resume")
    cfg = read_model_config(single / "s1" / "step10")
    assert list_checkpoints(resumed / "s1") == list_checkpoints(single / "s1")
    for step in (8, 10):
        assert_weights_close(weights(single, step), weights(resumed, step), cfg)
    steps = [json.loads(line)["step"] for line in
             (resumed / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10))  # one row per step, the re-trained ones once
