"""Keep freed memory in the process: on CPUs, page faults otherwise slow every training step
and every evaluation batch.

glibc hands allocations above 128 KiB straight back to the kernel when they are freed, so
every step's logits, activations and gradients are faulted in again page by page
(benchmarks/bench_allocator.py measures the cost). Raising the mmap and trim thresholds keeps
those pages in the heap for the next step. It is a setting of the whole process, applied by
`lmsuite.accel.configure_process()`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory; True when it applied (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) and mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
