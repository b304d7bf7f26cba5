"""Shared test fixtures: tiny configs on 2 CPU cores."""

import os

import pytest
import torch

# Tests compare numbers across runs and processes; keep them on a fixed thread count.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
