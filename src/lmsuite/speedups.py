"""The one seam between lmsuite and its optional CPU speed-ups (`lmsuite.accel`): training,
evaluation and the studies attach the kernels here, once per model, and record the path that
computed a checkpoint. Without `accel`, `attach` returns [] and the model runs as written."""

from __future__ import annotations

from lmsuite import accel


def attach(model) -> list[str]:
    """Attach the CPU kernels that fit `model` (before wrapping it for data parallelism);
    the names of those attached."""
    return accel.install(model)


def compute_path(kernels: list[str]) -> dict:
    """How a process computes, for provenance (kernels and matrix products round differently
    from PyTorch's own): {"cpu_kernels": [...], "blas": ...}."""
    return {"cpu_kernels": sorted(kernels), "blas": accel.blas_path()}
