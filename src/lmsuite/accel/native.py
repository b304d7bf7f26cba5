"""Compiles accel's C sources (`csrc/`) once per machine into a cache, on first use.

A library is compiled per machine, compiler and shape parameter into the cache folder
(`$LMSUITE_CACHE`, else `$XDG_CACHE_HOME/lmsuite`, else `~/.cache/lmsuite`), written
atomically, with `-march=native`. This module does not import torch: `accel.blas` builds
its library before torch is imported.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

from lmsuite.durable import write_file

SOURCES = Path(__file__).parent / "csrc"


def cache_dir() -> Path:
    """Where built kernels are kept."""
    root = os.environ.get("LMSUITE_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = os.path.join(base, "lmsuite")
    return Path(root) / "kernels"


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its instruction-set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(lines))


def _compiler() -> tuple[str, str] | None:
    """(path, version text) of the C compiler ($CC, else cc), or None when there is none."""
    path = shutil.which(os.environ.get("CC", "cc"))
    if path is None:
        return None
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (path, proc.stdout) if proc.returncode == 0 else None


SLOWER_OPERATIONS = "using PyTorch's operations, which are slower on CPU"


def build(name: str, defines: dict[str, int], openmp: bool = True,
          otherwise: str = SLOWER_OPERATIONS) -> Path | None:
    """Compile csrc/<name>.c with `defines` (and OpenMP) into the cache (once); the library's
    path, or None when it cannot be built, with a warning that ends in what happens
    `otherwise`."""
    compiler = _compiler()
    if compiler is None:
        warnings.warn(f"lmsuite: no C compiler (cc or $CC) found; {otherwise}", stacklevel=3)
        return None
    cc, version = compiler
    source = SOURCES / f"{name}.c"
    flags = ["-O3", "-march=native", "-fPIC", "-shared", *(["-fopenmp"] if openmp else []),
             *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    headers = [h.read_text() for h in sorted(SOURCES.glob("*.h"))]
    key = hashlib.sha256("\0".join([source.read_text(), *headers, *flags, version,
                                    _cpu_identity(), platform.machine()]).encode()).hexdigest()[:16]
    tag = "".join(f"-{k.lower()}{v}" for k, v in sorted(defines.items()))
    out = cache_dir() / f"{name}{tag}-{key}.so"
    if out.exists():
        return out

    def compile_into(tmp: Path) -> None:
        proc = subprocess.run([cc, *flags, "-o", str(tmp), str(source), "-lm"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise _BuildFailed(f"building {source.name} with {cc} failed ({detail})")

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # another process building the same file at once is harmless: both rename into place
        write_file(out, compile_into)
    except OSError as err:
        warnings.warn(f"lmsuite: cannot write the kernel cache {out.parent} ({err}); "
                      f"{otherwise}", stacklevel=3)
        return None
    except _BuildFailed as failed:
        warnings.warn(f"lmsuite: {failed}; {otherwise}", stacklevel=3)
        return None
    return out


class _BuildFailed(Exception):
    """The compiler refused a source (the warning says why)."""
