"""Every file and folder lmsuite writes, written atomically: under a temporary name, flushed to
disk, renamed into place, the folder flushed; so that a kill or a machine that goes down leaves
the old file or the new one, never half of one, and no complete-looking checkpoint or dataset
with empty files in it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

Content = bytes | str | dict | list | Callable[[Path], object]


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


def temporary(final: str | os.PathLike) -> Path:
    """The temporary name this process writes `final` under before it is renamed into place:
    hidden, beside it (a rename within one folder is atomic), and owned by this process."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is a name `temporary` gives (left behind by a killed writer)."""
    name = Path(path).name
    return name.startswith(".") and ".tmp-" in name


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Make the written file `tmp` the file `final`: flushed, renamed, the folder flushed."""
    fsync(tmp)
    os.replace(tmp, final)
    fsync(Path(final).parent)


def write_file(path: str | os.PathLike, content: Content) -> Path:
    """Write `path` atomically. `content` is bytes, text, a dict or list (written as indented
    JSON with a final newline) or a function that writes the file at the path it is given (for
    writers of their own: safetensors, numpy, torch, a compiler). A failure leaves no
    temporary file and the old file, if any, as it was."""
    path = Path(path)
    tmp = temporary(path)
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        elif isinstance(content, dict | list):
            tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        else:
            content(tmp)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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


def rename_away(folder: str | os.PathLike, suffix: str) -> Path:
    """Rename `folder` to `<folder><suffix>` in one step (before deleting it, so that a kill
    midway leaves no half of it under its own name); returns the new path."""
    folder = Path(folder)
    away = folder.with_name(folder.name + suffix)
    os.replace(folder, away)
    return away
