"""Flushing files and folders to disk before a rename makes them visible, so that a machine
that goes down leaves no complete-looking checkpoint or dataset with empty files in it; and
replacing a folder so that a kill leaves the old one or the new one, never half of one."""

from __future__ import annotations

import os
import shutil
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


def _aside(final: Path) -> Path:
    return final.with_name(f".{final.name}.old-{os.getpid()}")


def replace_folder(new: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename folder `new` to `final`. A folder already at `final` is first renamed aside,
    whole, and deleted only once the new one is in place: deleting it first would leave half
    of it to a kill during the deletion, and none of it when the last rename fails. A kill
    between the two renames leaves the old one aside, where `put_back_moved_aside` finds it."""
    new, final = Path(new), Path(final)
    aside = _aside(final)
    moved = final.exists()
    if moved:
        os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        if moved:
            os.replace(aside, final)
        raise
    fsync(final.parent)  # the renames themselves
    shutil.rmtree(aside, ignore_errors=True)


def put_back_moved_aside(parent: str | os.PathLike, name: str = "*") -> None:
    """After a kill inside `replace_folder` on folder `name` (any, by default) in `parent`: put
    an old folder back where no new one took its place, and delete it where one did."""
    for aside in Path(parent).glob(f".{name}.old-*"):
        stem, pid = aside.name[1:].rsplit(".old-", 1)
        if not (pid.isdigit() and aside.is_dir()):
            continue  # not one of ours
        final = aside.with_name(stem)
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final)
