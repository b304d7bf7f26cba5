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
