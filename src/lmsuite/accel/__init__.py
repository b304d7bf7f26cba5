"""lmsuite's optional CPU speed-ups: C kernels for a model's layers and loss, and two
process-wide settings (MKL's tuned matrix products on AMD CPUs, glibc's malloc thresholds).

Nothing here happens on import. `configure_process()` applies the process settings (the
`lmsuite` command calls it first, before torch is imported); `install(model)` attaches the
kernels to a built model (lmsuite's trainer and evaluation do, through `lmsuite.speedups`).
Without this package lmsuite works the same, on PyTorch's operations, more slowly.

    import lmsuite.accel
    lmsuite.accel.configure_process()   # first, before anything imports torch
    model = lmsuite.load_model("path/to/pythia-70m")
    lmsuite.accel.install(model)        # -> ["cross_entropy", "attention", ...]

LMSUITE_CPU_KERNELS=0 keeps the kernels off; LMSUITE_MKL_TUNED=0 keeps MKL's own choice.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager


def configure_process() -> dict:
    """Apply the process-wide settings; call it before anything imports torch. Returns what
    applied: {"blas": the products MKL runs, "keep_freed_memory": bool}."""
    from lmsuite.accel import allocator, blas

    blas.use_tuned_products()
    return {"blas": blas.state(), "keep_freed_memory": allocator.keep_freed_memory()}


def blas_path() -> str:
    """Which matrix products this process runs (`accel.blas.state()`): "tuned", "not
    configured", "late", "off", "unavailable" or "not applicable"."""
    from lmsuite.accel import blas

    return blas.state()


def kernels_enabled() -> bool:
    """False when the environment turns the kernels off (LMSUITE_CPU_KERNELS=0)."""
    return os.environ.get("LMSUITE_CPU_KERNELS", "1") != "0"


def install(model) -> list[str]:
    """Attach the kernels that fit `model` (a GPTNeoX, fp32 on the CPU, before any wrapping
    for data parallelism); returns their names, [] where none applies (another device or
    dtype, no C compiler, LMSUITE_CPU_KERNELS=0). The kernels are built on first use."""
    import sys

    if not kernels_enabled() or not sys.platform.startswith("linux"):
        return []
    from lmsuite.accel.layer import install_kernels

    return install_kernels(model)


def disabled() -> AbstractContextManager:
    """Within: an installed model runs PyTorch's operations (to compare against the kernels)."""
    from lmsuite.accel.kernels import disabled as kernels_disabled

    return kernels_disabled()
