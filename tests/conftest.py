"""Shared test fixtures: tiny configs on 2 CPU cores."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# Tests compare numbers across runs and processes; keep them on a fixed thread count.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    """CPU kernels are built into a folder of this session, not the user's cache."""
    config._lmsuite_cache = tempfile.mkdtemp(prefix="lmsuite-test-kernels-")
    os.environ["LMSUITE_CACHE"] = config._lmsuite_cache


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip where torch sees no CUDA device, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none here (the CPU tests cover the "
                            "paths that do not)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_lmsuite_cache", ""), ignore_errors=True)


PYTHIA_DIR = Path(os.environ.get("LMSUITE_PYTHIA_DIR",
                                 Path(__file__).resolve().parents[2] / "shared" / "pythia"))
"""Pythia's published artifacts (tokenizer, evaluation files, term-frequency CSVs), outside the
repository; tests that read them skip, saying so, where they are absent."""


def pythia_artifact(*parts: str) -> Path:
    """A file or folder of Pythia's published artifacts, or a skip naming what is missing."""
    path = PYTHIA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: Pythia's published artifacts are not on this machine "
                    "(set LMSUITE_PYTHIA_DIR to a copy)")
    return path


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach a model or dataset hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def small_suite(**data_overrides):
    """A suite small enough to build and train in seconds on 2 cores."""
    from lmsuite.config import DataConfig, ModelConfig, SuiteConfig, SyntheticConfig, TrainConfig

    data = dict(documents=400, vocab_size=512, seq_len=32, validation_fraction=0.05,
                synthetic=SyntheticConfig(entities=40, eval_items=40))
    data.update(data_overrides)
    return SuiteConfig(
        name="small",
        seed=1234,
        data=DataConfig(**data),
        train=TrainConfig(batch_size=8, micro_batch_size=8, steps=400, checkpoint_every=100),
        models=[ModelConfig(name="s1", layers=1, d_model=32, heads=2, lr=3e-3),
                ModelConfig(name="s2", layers=2, d_model=48, heads=3, lr=2e-3)],
    )


@pytest.fixture(scope="session")
def built_data(tmp_path_factory):
    """(suite, data folder) of the small suite, built once per test session."""
    from lmsuite.data.build import build_data

    suite = small_suite()
    out = tmp_path_factory.mktemp("built") / "data"
    build_data(suite, out, progress=False)
    return suite, out


def training_suite(built, **train_overrides):
    """The built small suite with a short training schedule (its data already fits)."""
    import dataclasses

    suite, _ = built
    train = dict(steps=40, checkpoint_every=10)
    train.update(train_overrides)
    return dataclasses.replace(suite, train=dataclasses.replace(suite.train, **train))


def run_dir_with_data(built, path):
    """A run folder holding a copy of the built data, so training does not build again."""
    import shutil

    _, data = built
    shutil.copytree(data, path / "data")
    return path


def assert_weights_close(a: dict, b: dict, cfg, rel: float = 1e-5) -> None:
    """Equal to float rounding: ||a - b|| <= rel * ||a|| over all the weights, and within
    10 * rel for each tensor.

    Adam divides each gradient by its own running scale, so an element whose gradient is near
    zero takes full-size steps in the direction of its rounding noise; one such element can
    carry a tensor past rel on its own (in one run, one element of the input embedding ended
    1.6e-4 apart, where every other row of it was within 5e-7). A wrong sample or a wrong
    gradient moves the weights by far more than 10 * rel.

    One part of the weights is left out: the key bias outside the rotary dimensions adds the
    same q.b to every score of a query, which softmax ignores, so its true gradient is zero
    and its rounding noise drifts freely without changing what the model computes.
    """
    assert a.keys() == b.keys()
    head = cfg.d_model // cfg.heads
    rotated = 2 * -(-cfg.rotary_dims // 2)
    diff_sq = norm_sq = 0.0
    for key in a:
        x, y = a[key].double(), b[key].double()
        if key.endswith("attention.query_key_value.bias"):
            keep = torch.ones(cfg.heads, 3, head, dtype=torch.bool)
            keep[:, 1, rotated:] = False
            x, y = x[keep.flatten()], y[keep.flatten()]
        diff = (x - y).norm().item()
        assert diff <= 10 * rel * x.norm().item(), (
            f"{key}: |a-b| = {diff:.3g}, |a| = {x.norm():.3g}")
        diff_sq += diff**2
        norm_sq += x.norm().item() ** 2
    total, size = diff_sq**0.5, norm_sq**0.5
    assert total <= rel * size, f"all weights: |a-b| = {total:.3g}, |a| = {size:.3g}"


@pytest.fixture(scope="session")
def small_run(built_data, tmp_path_factory):
    """(suite, run folder) with s1 trained 20 steps on the standard data."""
    from lmsuite.train.trainer import train

    suite = training_suite(built_data, steps=20, checkpoint_every=10)
    run_dir = run_dir_with_data(built_data, tmp_path_factory.mktemp("small_run"))
    train(suite, "s1", "standard", run_dir, progress=False)
    return suite, run_dir


@contextlib.contextmanager
def recording_batches():
    """Inside: {step: every row this process's Trainer fed to its model at that step}."""
    from lmsuite.train.trainer import Trainer

    seen: dict[int, list] = {}
    original = Trainer.micro_batches

    def recording(self, step):
        micro = original(self, step)
        seen.setdefault(step, []).extend(row for t in micro for row in t.tolist())
        return micro

    Trainer.micro_batches = recording
    try:
        yield seen
    finally:
        Trainer.micro_batches = original


def record_fsyncs_and_renames(monkeypatch) -> list[tuple]:
    """Within the test: ("fsync", path) and ("rename", src, dst) in the order they happen."""
    import os

    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_on_disk_before_renamed(events: list[tuple], final) -> None:
    """Every file and folder of `final` was flushed under its temporary name before the rename
    that made it `final`, and the parent folder after it."""
    rename = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(final))
    tmp = events[rename][1]
    synced = {e[1] for e in events[:rename] if e[0] == "fsync"}
    for path in [final, *final.rglob("*")]:
        assert tmp + str(path)[len(str(final)):] in synced, path
    assert ("fsync", str(final.parent)) in events[rename:]
