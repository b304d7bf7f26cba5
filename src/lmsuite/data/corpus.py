"""Document sources: stream texts from jsonl, txt, parquet files or a saved HF dataset."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lmsuite.errors import DataFormatError, LmsuiteError, reason

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


def _binary_lines(path: Path) -> Iterator[bytes]:
    """The undecoded lines of a plain, .gz or .zst file."""
    if _kind(path) == ".jsonl.zst":
        yield from _zstd_lines(path)
        return
    with (gzip.open(path, "rb") if _kind(path) == ".jsonl.gz" else path.open("rb")) as f:
        yield from f


def _zstd_lines(path: Path) -> Iterator[bytes]:
    """The lines of a .zst file, frame after frame; a file that ends inside a frame raises
    EOFError (a stream reader would end there quietly, as if the file were whole)."""
    import zstandard

    pending, whole = b"", True
    with path.open("rb") as f:
        frame = zstandard.ZstdDecompressor().decompressobj()
        while chunk := f.read(1 << 20):
            while chunk:
                pending += frame.decompress(chunk)
                chunk, whole = b"", frame.eof
                if frame.eof:  # the next frame starts in what is left
                    chunk = frame.unused_data
                    frame = zstandard.ZstdDecompressor().decompressobj()
            *lines, pending = pending.split(b"\n")
            yield from (line + b"\n" for line in lines)
    if not whole:
        raise EOFError("the file ends inside a zstd frame")
    if pending:
        yield pending


def _lines(path: Path, encoding: str, errors: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, plain or compressed, each line decoded on its own;
    a line that is not valid in the encoding, or a compressed file cut short, is an error
    naming the file and line."""
    number = 0
    try:
        for number, raw in enumerate(_binary_lines(path), 1):
            try:
                yield number, raw.decode(encoding, errors)
            except UnicodeDecodeError as e:
                raise DataFormatError(f"{path}:{number}: not valid {encoding} ({e.reason} at "
                                      f"byte {e.start} of the line); set [data] encoding, or "
                                      'encoding_errors = "replace"') from None
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise DataFormatError(f"{path}: the compressed file is damaged or cut short after line "
                              f"{number} ({reason(e)})") from None
    except Exception as e:  # zstandard.ZstdError is not an OSError
        if type(e).__name__ != "ZstdError":
            raise
        raise DataFormatError(f"{path}: the compressed file is damaged or cut short after line "
                              f"{number} ({reason(e)})") from None


def jsonl_texts(path: Path, field: str, encoding: str = "utf-8",
                errors: str = "strict") -> Iterator[str]:
    """The string `field` of each JSON line of `path` (plain, .gz or .zst); blank lines are
    skipped, and a line that is not JSON or lacks the field is an error naming the line."""
    for number, line in _lines(path, encoding, errors):
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


def _txt(path: Path, separator: str | None, encoding: str = "utf-8",
         errors: str = "strict") -> Iterator[str]:
    # Stream the file, cutting on the separator, so a large file is never read whole; bytes
    # are decoded here, so that an invalid one is named by its offset in the file.
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    pending, offset = "", 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(1 << 20)
            buffered = len(decoder.getstate()[0])  # bytes of the last chunk not decoded yet
            try:
                pending += decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                at = offset - buffered + e.start
                raise DataFormatError(f"{path}: not valid {encoding} at byte {at} "
                                      f"({e.reason}); set [data] encoding, or "
                                      'encoding_errors = "replace"') from None
            offset += len(chunk)
            if separator is not None:
                *done, pending = pending.split(separator)
                yield from (d for d in done if d.strip())
            if not chunk:
                break
    if separator is None or pending.strip():
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
                   txt_separator: str | None = None, encoding: str = "utf-8",
                   errors: str = "strict") -> Iterator[str]:
    """Every document's text, file after file, streamed: a large corpus is never held whole."""
    for path in files:
        if _is_saved_dataset(path):
            yield from _saved_dataset(path, text_field)
        elif _kind(path) == ".txt":
            yield from _txt(path, txt_separator, encoding, errors)
        elif _kind(path) == ".parquet":
            yield from _parquet(path, text_field)
        else:
            yield from jsonl_texts(path, text_field, encoding, errors)


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of every file of a saved dataset folder in sorted order."""
    digest = hashlib.sha256()
    parts = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for part in parts:
        with part.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
