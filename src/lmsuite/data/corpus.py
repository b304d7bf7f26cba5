"""Document sources: stream texts from jsonl, txt, parquet files or a saved HF dataset."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lmsuite.errors import DataFormatError, LmsuiteError

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".txt", ".parquet")


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_info.json").is_file() and (
        path / "state.json").is_file()


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def source_files(sources: list[str | os.PathLike]) -> list[Path]:
    """The files (and saved datasets) that `sources` name, folders expanded in sorted order."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise LmsuiteError(f"{path}: data source not found")
        if path.is_file():
            if _kind(path) is None:
                raise DataFormatError(f"{path}: unsupported document file; expected one of "
                                      f"{', '.join(SUFFIXES)} or a saved HF dataset folder")
            found.append(path)
        elif _is_saved_dataset(path):
            found.append(path)
        else:
            inside = [p for p in sorted(path.rglob("*"))
                      if not any(part.startswith(".") for part in p.relative_to(path).parts)
                      and ((p.is_file() and _kind(p)) or _is_saved_dataset(p))]
            if not inside:
                raise DataFormatError(f"{path}: folder holds no document files "
                                      f"({', '.join(SUFFIXES)})")
            found.extend(inside)
    return found


def _open_text(path: Path) -> io.TextIOBase:
    kind = _kind(path)
    if kind == ".jsonl.gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if kind == ".jsonl.zst":
        import zstandard

        raw = path.open("rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
    return path.open("r", encoding="utf-8")


def jsonl_texts(path: Path, field: str) -> Iterator[str]:
    """The string `field` of each JSON line of `path` (plain, .gz or .zst); blank lines are
    skipped, and a line that is not JSON or lacks the field is an error naming the line."""
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            text = row.get(field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise DataFormatError(f"{path}:{number}: no text field {field!r} (a string)")
            yield text


def _txt(path: Path, separator: str | None) -> Iterator[str]:
    if separator is None:
        yield path.read_text(encoding="utf-8")
        return
    # Stream the file, cutting on the separator, so a large file is never read whole.
    pending = ""
    with path.open("r", encoding="utf-8") as f:
        while chunk := f.read(1 << 20):
            pending += chunk
            *done, pending = pending.split(separator)
            yield from (d for d in done if d.strip())
    if pending.strip():
        yield pending


def _parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for unreadable files
        raise DataFormatError(f"{path}: not a readable parquet file ({e})") from None
    if field not in parquet.schema_arrow.names:
        raise DataFormatError(f"{path}: no column {field!r}; columns are "
                              f"{parquet.schema_arrow.names}")
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if t is not None)


def _saved_dataset(path: Path, field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise LmsuiteError(f"{path}: reading a saved HF dataset needs the `datasets` package "
                           "(pip install 'lmsuite[datasets]')") from None
    dataset = datasets.load_from_disk(str(path))
    if field not in dataset.column_names:
        raise DataFormatError(f"{path}: no column {field!r}; columns are {dataset.column_names}")
    for batch in dataset.iter(batch_size=1024):
        yield from batch[field]


def iter_documents(files: list[Path], text_field: str = "text",
                   txt_separator: str | None = None) -> Iterator[str]:
    """Every document's text, file after file, streamed: a large corpus is never held whole."""
    for path in files:
        if _is_saved_dataset(path):
            yield from _saved_dataset(path, text_field)
        elif _kind(path) == ".txt":
            yield from _txt(path, txt_separator)
        elif _kind(path) == ".parquet":
            yield from _parquet(path, text_field)
        else:
            yield from jsonl_texts(path, text_field)


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of every file of a saved dataset folder in sorted order."""
    digest = hashlib.sha256()
    parts = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for part in parts:
        with part.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
