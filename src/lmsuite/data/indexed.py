"""Megatron / GPT-NeoX MMapIndexedDataset: the .bin/.idx token files Pythia's data ships in.

Index layout (little-endian): magic `MMIDIDX\\x00\\x00`, uint64 version (1), uint8 dtype code,
uint64 item count n, uint64 doc_idx count m, int32 sizes[n], int64 pointers[n] (byte offsets
into .bin), int64 doc_idx[m] (item index where each document starts; the last entry is n).

Pythia's pre-shuffled release cuts the one .bin into byte-level shards,
`document-00000-of-00020.bin` ... ("of" names the last index), beside one `document.idx`;
they are read in place as the one file they were cut from (a memory map per shard).
"""

from __future__ import annotations

import os
import re
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmsuite.durable import publish, temporary
from lmsuite.errors import DataFormatError

MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = 9 + 8 + 1 + 8 + 8
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.bin$")


def shard_paths(prefix: str | os.PathLike) -> list[Path]:
    """The shards `<prefix>-00000-of-NNNNN.bin` ... of a .bin cut into pieces, in order; empty
    where there are none. A missing shard is an error naming it."""
    prefix = Path(prefix)
    found = sorted(prefix.parent.glob(f"{glob_escape(prefix.name)}-[0-9][0-9][0-9][0-9][0-9]"
                                      "-of-[0-9][0-9][0-9][0-9][0-9].bin"))
    if not found:
        return []
    last = {int(SHARD.search(p.name).group(2)) for p in found}
    if len(last) != 1:
        raise DataFormatError(f"{prefix}: shards of different counts ({sorted(last)} as the "
                              "last index) side by side")
    total = last.pop() + 1
    expected = [prefix.parent / f"{prefix.name}-{i:05d}-of-{total - 1:05d}.bin"
                for i in range(total)]
    missing = [str(p) for p in expected if not p.is_file()]
    if missing:
        raise DataFormatError(f"{missing[0]}: shard missing ({len(missing)} of {total} are); "
                              "all shards are needed")
    return expected


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", name)


class ShardedTokens:
    """The tokens of a .bin cut into byte-level shards, indexed as the one array they were cut
    from: ints, slices and integer arrays, like the memory map of the joined file."""

    def __init__(self, paths: list[Path], dtype: np.dtype):
        self.paths, self.dtype = paths, np.dtype(dtype)
        self.maps = [np.memmap(p, mode="r", dtype=np.uint8) if p.stat().st_size else
                     np.zeros(0, np.uint8) for p in paths]
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])  # byte offset per shard
        self.nbytes = int(self.starts[-1])
        self.size = self.nbytes // self.dtype.itemsize
        self.shape = (self.size,)

    def __len__(self) -> int:
        return self.size

    def _bytes(self, begin: int, end: int) -> np.ndarray:
        """Bytes [begin, end) of the joined file: a view where one shard holds them all."""
        first = int(np.searchsorted(self.starts, begin, side="right")) - 1
        if end <= self.starts[first + 1]:
            return self.maps[first][begin - self.starts[first]:end - self.starts[first]]
        parts, at = [], begin
        while at < end:
            shard = int(np.searchsorted(self.starts, at, side="right")) - 1
            stop = min(end, int(self.starts[shard + 1]))
            parts.append(self.maps[shard][at - self.starts[shard]:stop - self.starts[shard]])
            at = stop
        return np.concatenate(parts)

    def __getitem__(self, key):
        size = self.dtype.itemsize
        if isinstance(key, slice):
            start, stop, stride = key.indices(self.size)
            if stop <= start:
                return np.zeros(0, self.dtype)
            return self._bytes(start * size, stop * size).view(self.dtype)[::stride]
        if isinstance(key, int | np.integer):
            key = int(key) + (self.size if key < 0 else 0)
            if not 0 <= key < self.size:
                raise IndexError(f"token {key} out of range (0..{self.size - 1})")
            return self._bytes(key * size, (key + 1) * size).view(self.dtype)[0]
        positions = np.asarray(key, np.int64)
        out = np.empty(positions.shape, self.dtype)
        flat, result = positions.ravel(), out.ravel()
        shard = np.searchsorted(self.starts, flat * size, side="right") - 1
        for s in np.unique(shard):
            chosen = shard == s
            local = flat[chosen] * size - self.starts[s]
            inside = local + size <= len(self.maps[s])
            view = self.maps[s][: len(self.maps[s]) // size * size].view(self.dtype) \
                if (self.starts[s] % size == 0) else None
            if view is not None and inside.all():
                result[chosen] = view[local // size]
            else:  # a token cut by the shard's edge
                result[chosen] = [self[int(p)] for p in flat[chosen]]
        return out

    def token_aligned(self) -> bool:
        """Whether every shard starts on a token (as Pythia's, 5,000,000,000-byte shards do)."""
        return all(int(s) % self.dtype.itemsize == 0 for s in self.starts)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits, int32 otherwise."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.int32)


class IndexedDataset:
    """Read-only, memory-mapped items of a .bin/.idx pair; O(1) per item, nothing copied whole."""

    def __init__(self, prefix: str | os.PathLike):
        prefix = str(prefix)
        self.idx_path, self.bin_path = Path(prefix + ".idx"), Path(prefix + ".bin")
        self.shards = [] if self.bin_path.is_file() else shard_paths(prefix)
        if self.shards:
            self.bin_path = self.shards[0]
        for path in (self.idx_path, self.bin_path):
            if not path.is_file():
                raise DataFormatError(f"{path}: file not found")
        idx_bytes = self.idx_path.stat().st_size
        if idx_bytes < HEADER_BYTES:
            raise DataFormatError(f"{self.idx_path}: truncated index ({idx_bytes} bytes, a "
                                  f"header alone is {HEADER_BYTES})")
        with self.idx_path.open("rb") as f:
            header = f.read(HEADER_BYTES)
        if header[:9] != MAGIC:
            raise DataFormatError(f"{self.idx_path}: not a Megatron index (magic {header[:9]!r}, "
                                  f"expected {MAGIC!r})")
        version, code, n, m = struct.unpack("<QBQQ", header[9:])
        if version != 1:
            raise DataFormatError(f"{self.idx_path}: index version {version}, expected 1")
        if code not in DTYPES:
            raise DataFormatError(f"{self.idx_path}: unknown dtype code {code}, expected one "
                                  f"of {sorted(DTYPES)}")
        expected = HEADER_BYTES + 4 * n + 8 * n + 8 * m
        # Multimodal indexes append one int8 mode per item; lmsuite ignores them.
        if idx_bytes not in (expected, expected + n):
            problem = "truncated index" if idx_bytes < expected else "index has trailing bytes"
            raise DataFormatError(f"{self.idx_path}: {problem} ({idx_bytes} bytes; {n} items and "
                                  f"{m} doc_idx entries need {expected})")
        self.dtype = np.dtype(DTYPES[code])
        index = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(index, np.int32, n, HEADER_BYTES)
        self.pointers = np.frombuffer(index, np.int64, n, HEADER_BYTES + 4 * n)
        self.doc_idx = np.frombuffer(index, np.int64, m, HEADER_BYTES + 12 * n)
        bin_bytes = sum(p.stat().st_size for p in self.shards or [self.bin_path])
        if n and int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize > bin_bytes:
            what = f"{len(self.shards)} shards from {self.bin_path}" if self.shards else \
                str(self.bin_path)
            raise DataFormatError(f"{what}: shorter ({bin_bytes} bytes) than its index "
                                  "says; the file is truncated")
        count = bin_bytes // self.dtype.itemsize
        if self.shards:
            self.tokens = ShardedTokens(self.shards, self.dtype)
        else:
            self.tokens = (np.memmap(self.bin_path, mode="r", dtype=self.dtype, shape=(count,))
                           if count else np.zeros(0, self.dtype))

    def __len__(self) -> int:
        return len(self.sizes)

    def _check(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.idx_path}: item {i} out of range (0..{len(self) - 1})")
        return i % len(self) if len(self) else i

    def __getitem__(self, i: int) -> np.ndarray:
        """Item i as a read-only array view into the memory-mapped .bin."""
        i = self._check(int(i))
        start, size = int(self.pointers[i]), int(self.sizes[i])
        if start % self.dtype.itemsize or start + size * self.dtype.itemsize > self.tokens.nbytes:
            raise DataFormatError(f"{self.bin_path}: item {i} points past the end of the file")
        first = start // self.dtype.itemsize
        return self.tokens[first:first + size]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Items [start, stop) as one (stop - start, length) array; they must be equal-sized
        and stored back to back, as training samples are. Costs O(stop - start)."""
        if not 0 <= start < stop <= len(self):
            raise IndexError(f"{self.idx_path}: items [{start}, {stop}) out of range "
                             f"(the file holds {len(self)})")
        sizes = self.sizes[start:stop]
        length = int(sizes[0])
        first = int(self.pointers[start])
        contiguous = (np.all(sizes == length) and int(self.pointers[stop - 1]) ==
                      first + (stop - start - 1) * length * self.dtype.itemsize)
        if not contiguous:
            raise DataFormatError(f"{self.idx_path}: items [{start}, {stop}) are not equal-sized "
                                  "samples stored back to back")
        begin = first // self.dtype.itemsize
        end = begin + (stop - start) * length
        if end * self.dtype.itemsize > self.tokens.nbytes:
            raise DataFormatError(f"{self.bin_path}: items [{start}, {stop}) run past the end "
                                  "of the file")
        return self.tokens[begin:end].reshape(stop - start, length)


@dataclass
class WriterState:
    """Where an unfinished writer stands, for a later process to go on writing (a data build
    resumed after an interruption): its temporary .bin file, how many of its bytes count, and
    the items and documents written into them."""

    tmp_bin: Path
    nbytes: int
    sizes: np.ndarray
    doc_idx: np.ndarray


class IndexedDatasetWriter:
    """Append items to a .bin/.idx pair; `close()` writes the index and renames both into place.

    Each item is one document unless `end_document` is called explicitly (Megatron's builder).
    Given `resume`, it goes on from a state that `state()` recorded, dropping what was written
    after it.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype,
                 resume: WriterState | None = None):
        prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODES:
            raise ValueError(f"dtype {self.dtype} has no Megatron dtype code")
        self.bin_path, self.idx_path = Path(prefix + ".bin"), Path(prefix + ".idx")
        self._tmp_idx = temporary(self.idx_path)
        self._sizes = array("i")
        self._doc_idx = array("q", [0])
        if resume is None:
            self._tmp_bin = temporary(self.bin_path)
            self._bin = self._tmp_bin.open("wb")
            return
        self._tmp_bin = Path(resume.tmp_bin)
        written = self._tmp_bin.stat().st_size if self._tmp_bin.is_file() else -1
        if written < resume.nbytes:
            raise DataFormatError(f"{self._tmp_bin}: expected at least {resume.nbytes} bytes "
                                  f"written before, found {max(written, 0)}")
        self._bin = self._tmp_bin.open("r+b")
        self._bin.truncate(resume.nbytes)
        self._bin.seek(resume.nbytes)
        self._sizes = array("i", np.asarray(resume.sizes, np.int32).tobytes())
        self._doc_idx = array("q", np.asarray(resume.doc_idx, np.int64).tobytes())

    @property
    def items(self) -> int:
        """Items written so far."""
        return len(self._sizes)

    def state(self) -> WriterState:
        """Flush what is written to disk, and say where the writer stands (for `resume`)."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        return WriterState(self._tmp_bin, self._bin.tell(),
                           np.frombuffer(self._sizes, np.int32).copy(),
                           np.frombuffer(self._doc_idx, np.int64).copy())

    def release(self) -> None:
        """Stop writing, keeping the temporary .bin file for a writer resumed from `state()`."""
        self._bin.close()

    def add_item(self, tokens: np.ndarray | list[int], end_document: bool = True) -> None:
        """Append one item; with `end_document`, it is a whole document."""
        data = np.asarray(tokens)
        if data.size and (data.min() < 0 or data.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids {data.min()}..{data.max()} do not fit {self.dtype}")
        self._bin.write(data.astype(self.dtype, copy=False).tobytes())
        self._sizes.append(int(data.size))
        if end_document:
            self._doc_idx.append(len(self._sizes))

    def add_items(self, block: np.ndarray) -> None:
        """Append every row of a 2-D array as an item of its own (training samples)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        self._bin.write(block.tobytes())
        self._sizes.extend([block.shape[1]] * block.shape[0])
        self._doc_idx.extend(range(len(self._sizes) - block.shape[0] + 1, len(self._sizes) + 1))

    def end_document(self) -> None:
        self._doc_idx.append(len(self._sizes))

    def close(self) -> None:
        self._bin.close()
        sizes = np.frombuffer(self._sizes, dtype=np.int32) if self._sizes else np.zeros(0, np.int32)
        pointers = np.zeros(len(sizes), np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.frombuffer(self._doc_idx, dtype=np.int64)
        with self._tmp_idx.open("wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<QBQQ", 1, CODES[self.dtype], len(sizes), len(doc_idx)))
            f.write(sizes.tobytes())
            f.write(pointers.tobytes())
            f.write(doc_idx.tobytes())
        publish(self._tmp_bin, self.bin_path)  # the data first: an index never points past it
        publish(self._tmp_idx, self.idx_path)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._bin.close()
            self._tmp_bin.unlink(missing_ok=True)
