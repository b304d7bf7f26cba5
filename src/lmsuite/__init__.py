"""lmsuite: train and study suites of language models the way the Pythia suite was built.

Importing lmsuite imports no torch and changes nothing in the process: the public names below
load on first use. Process-wide speed settings are `lmsuite.accel.configure_process()`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "GPTNeoX": "lmsuite.model.neox",
    "NeoXConfig": "lmsuite.model.neox",
    "SuiteConfig": "lmsuite.config",
    "load_model": "lmsuite.model.hf",
    "load_suite": "lmsuite.config",
    "save_model": "lmsuite.model.hf",
    "save_suite": "lmsuite.config",
    "batch_at": "lmsuite.data.order",
    "batch_documents": "lmsuite.data.order",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'lmsuite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
