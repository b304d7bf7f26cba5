"""What `keep_freed_memory` saves: allocating and filling a 32 MB tensor (the logits of a
16 x 128 batch over a 4096-token vocabulary), freed after each use, with and without it.
Each setting runs in its own process, the two taking turns. One result line.

    .venv/bin/python benchmarks/bench_allocator.py [--rounds 5]
"""

import argparse
import subprocess
import sys

from common import emit, figure

WORKER = """
import sys, time, torch
if sys.argv[1] == "keep":
    from lmsuite.accel.allocator import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(2)
best = 1e9
for _ in range(5):
    start = time.perf_counter()
    for _ in range(20):
        torch.zeros(2048, 4096)
    best = min(best, (time.perf_counter() - start) / 20)
print(best * 1e3)
"""


def run(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", WORKER, mode], check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    default, keep = [], []
    for _ in range(args.rounds):
        default.append(run("default"))
        keep.append(run("keep"))
    emit("allocator", "32 MB tensor", {
        "default_ms": figure(default, "ms"), "keep_freed_memory_ms": figure(keep, "ms"),
        "ratio": figure([d / k for d, k in zip(default, keep, strict=True)], "x")},
        rounds=args.rounds)
