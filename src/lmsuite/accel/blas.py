"""Let MKL, PyTorch's BLAS on x86-64, run its tuned matrix products on AMD CPUs too.

MKL chooses its code by the CPU's vendor: on CPUs that are not Intel's, its fp32 products run
a generic path, slower than the path MKL takes on Intel CPUs with the same instruction sets
(benchmarks/RESULTS.md, bench_mkl). MKL asks a function of its own, `mkl_serv_intel_cpu_true`;
a library that defines it (csrc/mkl_vendor.c), loaded into the global symbol scope before
PyTorch, answers in its place. The dynamic linker binds MKL's call the first time it is made,
which `import torch` already does, so `use_tuned_products()` must run before anything imports
torch (`lmsuite.accel.configure_process()` calls it); called later, it changes nothing and
`state()` says "late".

It applies on Linux, on x86-64 CPUs of AMD that have AVX2 and FMA, unless LMSUITE_MKL_TUNED=0.
Matrix products round differently on the two paths, so a run resumed in a process on the other
path trains on correctly but is not byte-identical to one never stopped.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import warnings
from pathlib import Path

from lmsuite.accel.native import build

_library: ctypes.CDLL | None = None
_state = "not configured"


def _amd_with_avx2() -> bool:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    vendor = next((line for line in info.splitlines() if line.startswith("vendor_id")), "")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "").split()
    return "AuthenticAMD" in vendor and "avx2" in flags and "fma" in flags


def use_tuned_products() -> None:
    """Load csrc/mkl_vendor.c's library where it applies (see the module's docstring)."""
    global _library, _state
    if _library is not None:
        return
    if not _amd_with_avx2():
        _state = "not applicable"
        return
    if os.environ.get("LMSUITE_MKL_TUNED", "1") == "0":
        _state = "off"
        return
    if "torch" in sys.modules:
        _state = "late"
        warnings.warn("lmsuite: torch was imported before lmsuite.accel.configure_process(), so "
                      "MKL keeps its generic, slower matrix products on this AMD CPU; call it "
                      "first", stacklevel=3)
        return
    _state = "unavailable"
    otherwise = "MKL runs its generic, slower matrix products on this AMD CPU"
    for _ in range(2):  # a damaged cache file is built again, once
        path = build("mkl_vendor", {}, openmp=False, otherwise=otherwise)
        if path is None:
            return
        try:
            _library = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            path.unlink(missing_ok=True)
            error = err
        else:
            _state = "loaded"
            return
    warnings.warn(f"lmsuite: cannot load {path.name} ({error}); {otherwise}", stacklevel=2)


def state() -> str:
    """Which products this process runs: "tuned" (MKL's tuned path on an AMD CPU); for MKL's
    generic path on one, "not configured" (`use_tuned_products` was not called), "late" (torch
    was imported before it), "off" (LMSUITE_MKL_TUNED=0) or "unavailable" (no C compiler);
    "not applicable" on another CPU, or a PyTorch whose products are not MKL's."""
    if _state == "not configured" and not _amd_with_avx2():
        return "not applicable"
    if _state != "loaded":
        return _state
    import torch

    torch.ones(8, 8) @ torch.ones(8, 8)  # MKL asks at its first call, if not before
    return "tuned" if _library.lmsuite_mkl_asked() else "not applicable"
