"""What `keep_freed_memory` saves: allocating and filling a 32 MB tensor (the logits of a
16 x 128 batch over a 4096-token vocabulary), freed after each use, with and without it.
Each setting runs in its own process. One JSON line.
"""

import json
import subprocess
import sys
import time

WORKER = """
import sys, time, torch
if sys.argv[1] == "keep":
    from lmsuite.allocator import keep_freed_memory
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
    start = time.strftime("%H:%M")
    default, keep = run("default"), run("keep")
    print(json.dumps({"benchmark": "allocator", "tensor_mb": 32, "at": start,
                      "default_ms": round(default, 2), "keep_freed_memory_ms": round(keep, 2),
                      "ratio": round(default / keep, 1)}))
