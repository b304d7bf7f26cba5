"""Fixtures of the model tests."""

import pytest

from lmsuite.model.kernel_build import attention_library


@pytest.fixture(scope="module")
def kernels():
    """Skips a test where the CPU attention kernel cannot be built."""
    if attention_library(16) is None:
        pytest.skip("the CPU attention kernel cannot be built here (no C compiler or OpenMP)")
