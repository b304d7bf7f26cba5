"""Latency of batch_at for Pythia's shape: 1024 samples of 2049 uint16 tokens (target: median
at most 5 ms). One result line.

    .venv/bin/python benchmarks/bench_batch_at.py
"""

import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, figure

from lmsuite.data.indexed import IndexedDatasetWriter
from lmsuite.data.order import batch_at

BATCH, LENGTH, STEPS = 1024, 2049, 24

with tempfile.TemporaryDirectory() as tmp:
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(Path(tmp) / "train", np.uint16) as writer:
        for _ in range(STEPS):
            writer.add_items(rng.integers(0, 50277, size=(BATCH, LENGTH), dtype=np.uint16))
    batch_at(tmp, 0, BATCH)  # open once: later calls reuse the memory map
    times = []
    for step in rng.integers(0, STEPS, size=200):
        start = time.perf_counter()
        batch = batch_at(tmp, int(step), BATCH)
        times.append(1e3 * (time.perf_counter() - start))
    assert batch.shape == (BATCH, LENGTH)
    emit("batch_at", "1024 x 2049 uint16", {"latency_ms": figure(times, "ms")},
         p95_ms=round(float(np.percentile(times, 95)), 3), target_ms=5)
