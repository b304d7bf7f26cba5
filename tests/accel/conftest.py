"""Fixtures of the accel tests."""

import pytest
import torch

from lmsuite.accel.libraries import (
    attention_library,
    cross_entropy_library,
    gelu_library,
    layer_norm_library,
)


@pytest.fixture(scope="session")
def kernels():
    """Skips a test where the CPU kernels cannot be built (no C compiler or OpenMP)."""
    if None in (attention_library(16), cross_entropy_library(), gelu_library(),
                layer_norm_library()):
        pytest.skip("the CPU kernels cannot be built here (no C compiler or OpenMP)")


def installed_model(cfg, seed: int = 0):
    """A GPTNeoX of `cfg` with Pythia's init and the kernels attached, and a plain twin."""
    from lmsuite import accel
    from lmsuite.model.neox import GPTNeoX

    fast, plain = GPTNeoX(cfg), GPTNeoX(cfg)
    fast.init_weights(seed)
    plain.init_weights(seed)
    assert accel.install(fast)
    return fast, plain


def at_one_and_three_threads(run):
    """run()'s tensors with PyTorch's pool at 1 thread and at 3."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    return results
