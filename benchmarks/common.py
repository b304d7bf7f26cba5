"""What every benchmark shares: the machine it ran on, measured in the same run, and one JSON
line per result in the shape `benchmarks/report.py` turns into RESULTS.md's tables.

A line: {"benchmark", "case", "figures": {name: {"median", "min", "max", "n", "unit"}},
"details": {...}, "machine": {"cpu", "cores", "torch", "matmul_fp32_gflops"}}. The machine's
rate is that of PyTorch's default path (a fresh process, no lmsuite settings), measured once
per run: the machine's speed changes from day to day, and every figure carries it.

Benchmarks configure their process as the `lmsuite` command does (`configure()`, before torch
is imported), so that they time the products lmsuite's commands run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

_machine: dict | None = None


def configure() -> None:
    """The `lmsuite` command's process settings (MKL's tuned products, malloc thresholds)."""
    import lmsuite.accel

    lmsuite.accel.configure_process()


def matmul_gflops(n: int = 1024, seconds: float = 0.5) -> float:
    """This machine's fp32 rate for n^3 products, as PyTorch runs them in this process."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_path_gflops() -> float:
    """The 1024^3 fp32 rate of PyTorch's default path, in a fresh process (median of 3)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from common import matmul_gflops; "
            "print(matmul_gflops())")
    rates = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                             capture_output=True, text=True, check=True).stdout
        rates.append(float(out))
    return statistics.median(rates)


def machine() -> dict:
    """The machine, with its 1024^3 fp32 product rate on PyTorch's default path."""
    global _machine
    if _machine is None:
        import torch

        _machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "matmul_fp32_gflops": round(default_path_gflops(), 1)}
    return _machine


def figure(values, unit: str, digits: int = 3) -> dict:
    """Median, min and max of repeated measurements (one value is a figure too)."""
    values = [float(v) for v in (values if isinstance(values, list | tuple) else [values])]
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits),
            "n": len(values), "unit": unit}


def emit(benchmark: str, case: str, figures: dict, **details) -> dict:
    """Print one result line (and return it)."""
    line = {"benchmark": benchmark, "case": case, "figures": figures, "details": details,
            "machine": machine()}
    print(json.dumps(line), flush=True)
    return line
