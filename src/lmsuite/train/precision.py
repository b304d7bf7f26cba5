"""Which precision a run computes in: bf16 autocast (fp32 master weights and optimizer state)
where the hardware has it natively, fp32 elsewhere.

GPUs with bf16 (Ampere and later) have it. CPUs differ: one with AVX512_BF16 or AMX multiplies
bf16 several times faster than fp32, one without (AVX2 only) about a hundred times slower,
so the choice follows what the CPU reports (its flags in /proc/cpuinfo), and "auto" also
measures: bf16 where it is native and a product in it is faster than in fp32.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


@functools.lru_cache(maxsize=4)
def bf16_faster(device_type: str) -> bool:
    """Whether a 1024³ product runs faster in bf16 than in fp32 here (best of 3 each)."""
    device = torch.device(device_type)

    def best(dtype) -> float:
        a = torch.randn(1024, 1024, device=device).to(dtype)
        b = torch.randn(1024, 1024, device=device).to(dtype)
        times = []
        for _ in range(4):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return min(times[1:])

    return best(torch.bfloat16) < best(torch.float32)


def resolve(precision: str, device: torch.device) -> tuple[str, str | None]:
    """(the precision a run computes in, a line saying why it differs from the one asked, or
    None): "bf16" only where it is native (and, for "auto", measured faster)."""
    if precision == "fp32":
        return "fp32", None
    if not native_bf16(device):
        if precision == "auto":
            return "fp32", None
        return "fp32", (f'precision = "bf16" asked, but this {device.type.upper()} has no '
                        "native bf16 (" + ("a GPU before Ampere" if device.type == "cuda" else
                                          "no AVX512_BF16 or AMX") + "): it trains in fp32")
    if precision == "auto" and not bf16_faster(device.type):
        return "fp32", None
    return "bf16", None
