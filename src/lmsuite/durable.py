"""Flushing files and folders to disk before a rename makes them visible, so that a machine
that goes down leaves no complete-looking checkpoint or dataset with empty files in it."""

from __future__ import annotations

import os
from pathlib import Path


def fsync(path: str | os.PathLike) -> None:
    """Flush one file, or one folder's entries (renames in it), to disk."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some network filesystems cannot fsync a folder; files they can
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and folder under `folder`, then `folder` itself."""
    folder = Path(folder)
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:
        fsync(path)
