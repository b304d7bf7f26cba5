"""Loads accel's C kernels, built on first use (`accel.native`).

Each kernel is compiled with OpenMP and loaded with ctypes only where it runs on PyTorch's own
OpenMP runtime. Where that cannot be done, a loader returns None (with a warning saying why)
and the model keeps PyTorch's operations.
"""

from __future__ import annotations

import ctypes
import warnings
from functools import cache
from pathlib import Path

import torch

from lmsuite.accel.native import build


def _openmp_runtimes() -> set[str]:
    """Files of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    names = ("libgomp", "libiomp", "libomp")
    return {line.split()[-1] for line in maps.splitlines()
            if any(n in line.rsplit("/", 1)[-1] for n in names)}


_PTR, _I32, _I64, _LONG, _F32 = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_long,
                                 ctypes.c_float)


def _load(name: str, defines: dict[str, int],
          signatures: dict[str, tuple[list, object]]) -> ctypes.CDLL | None:
    """csrc/<name>.c built with `defines` and loaded, its functions given their `signatures`
    (name -> (argument types, return type)); None where that cannot be done."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None  # the kernels run on PyTorch's OpenMP threads
    path = build(name, defines)
    if path is None:
        return None
    before = _openmp_runtimes()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:  # a damaged cache file: build it again, once
        path.unlink(missing_ok=True)
        path = build(name, defines)
        try:
            lib = ctypes.CDLL(str(path)) if path is not None else None
        except OSError:
            lib = None
        if lib is None:
            warnings.warn(f"lmsuite: cannot load the {name} kernel ({err}); using PyTorch's "
                          "operations, which are slower on CPU", stacklevel=3)
            return None
    if len(_openmp_runtimes()) > max(1, len(before)):
        # A second OpenMP runtime would compete with PyTorch's threads for the cores.
        warnings.warn(f"lmsuite: the {name} kernel loaded an OpenMP runtime other than "
                      "PyTorch's; using PyTorch's operations instead", stacklevel=3)
        return None
    for function, (argtypes, restype) in signatures.items():
        getattr(lib, function).argtypes = argtypes
        getattr(lib, function).restype = restype
    return lib


@cache
def attention_library(head_dim: int) -> ctypes.CDLL | None:
    """The attention kernel for heads of `head_dim`, built and loaded; None where it cannot be."""
    if head_dim % 8:
        return None
    return _load("attention", {"HD": head_dim}, {
        "attention_forward": ([_PTR] * 5 + [_I32] * 4 + [_F32, _I32], _I32),
        "attention_backward": ([_PTR] * 7 + [_I32] * 4 + [_F32, _I32], _I32)})


@cache
def cross_entropy_library() -> ctypes.CDLL | None:
    """The cross-entropy kernel, built and loaded; None where it cannot be."""
    return _load("cross_entropy", {}, {
        "cross_entropy": ([_PTR] * 4 + [_LONG, _I32, _I64, _I32, _PTR, _PTR], _LONG)})


@cache
def gelu_library() -> ctypes.CDLL | None:
    """The GELU kernel, built and loaded; None where it cannot be."""
    return _load("gelu", {}, {"gelu_forward": ([_PTR] * 3 + [_LONG, _I32], None)})


@cache
def layer_norm_library() -> ctypes.CDLL | None:
    """The LayerNorm pair kernel, built and loaded; None where it cannot be."""
    return _load("layer_norm", {}, {
        "layer_norm_pair_forward": ([_PTR] * 9 + [_LONG, _I32, _F32, _I32], None),
        "layer_norm_pair_backward": ([_PTR] * 10 + [_LONG, _I32, _I32], None)})
