"""A suffix-array index over a dataset's training tokens (EleutherAI's tokengrams), and what the
studies ask of it: where a token sequence occurs, by sample and step, inside samples only.

The index is built once per dataset beside its train.bin (8 bytes per token) and reused; it
answers a count or the positions of any token sequence in time logarithmic in the data.
A position p (in tokens) of train.bin lies in training item p // L, L = seq_len + 1, and that
item is trained on at step item // batch_size.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmsuite.data.indexed import IndexedDataset
from lmsuite.data.order import open_train
from lmsuite.durable import write_file
from lmsuite.errors import LmsuiteError
from lmsuite.progress import say

INDEX_SUFFIX = ".suffix.idx"
"""The index of `<prefix>.bin` is `<prefix>.suffix.idx` beside it."""


@contextmanager
def _quiet_stdout():
    """tokengrams prints its progress to the process's stdout from native code; keep the
    command's own output clean by sending it to stderr while it builds."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _tokengrams():
    try:
        import tokengrams
    except ImportError:
        raise LmsuiteError("the studies need EleutherAI's tokengrams "
                           "(pip install tokengrams)") from None
    return tokengrams


def _open_index(file: Path, path: Path, vocab: int, dtype: np.dtype, progress: bool):
    """tokengrams' index of one token file, built at `path` first where it is not there."""
    tg = _tokengrams()
    tokens = file.stat().st_size // dtype.itemsize
    if not path.is_file():
        if progress:
            say(f"lmsuite: indexing {file} ({tokens:,} tokens) into {path}")

        def build(tmp: Path) -> None:
            with _quiet_stdout():
                tg.MemmapIndex.build(str(file), str(tmp), vocab, False)

        write_file(path, build)
    if path.stat().st_size != 8 * tokens:
        raise LmsuiteError(f"{path}: {path.stat().st_size} bytes, an index of {file} has "
                           f"{8 * tokens}; delete it to build it again")
    return tg.MemmapIndex(str(file), str(path), vocab)


@dataclass
class TokenIndex:
    """Training items of `sample_len` tokens in a token file, and a suffix array over it. A
    file cut into shards (Pythia's pre-shuffled release) gets a suffix array per shard, each
    beside its shard; what crosses a shard's edge is found by reading the few tokens there."""

    data: IndexedDataset
    sample_len: int
    _indexes: list
    """(the shard's first token in the joined file, its tokengrams index)"""

    @classmethod
    def open(cls, data_dir: str | os.PathLike, index: str | os.PathLike | None = None,
             progress: bool = True) -> TokenIndex:
        """The index of a dataset's training tokens, built first where it does not exist
        (beside train.bin, or at `index`; for shards, beside each, or at `index`.<shard>)."""
        data = open_train(data_dir)
        if len(data) == 0:
            raise LmsuiteError(f"{data.idx_path}: holds no training items")
        sizes = np.unique(data.sizes)
        if len(sizes) != 1:
            raise LmsuiteError(f"{data.idx_path}: items of {len(sizes)} lengths; the studies "
                               "read training samples of one length")
        if data.shards:
            if not data.tokens.token_aligned():
                raise LmsuiteError(f"{data.bin_path}: its shards are not cut between tokens; "
                                   "the studies index each shard on its own")
            files = data.shards
            offsets = [int(s) // data.dtype.itemsize for s in data.tokens.starts[:-1]]
        else:
            files, offsets = [data.bin_path], [0]
        vocab = 2**16 if data.dtype.itemsize == 2 else 2**32
        indexes = []
        for number, (file, offset) in enumerate(zip(files, offsets, strict=True)):
            if index is None:
                path = Path(str(file)[:-4] + INDEX_SUFFIX)
            else:
                path = Path(index) if len(files) == 1 else Path(f"{index}.{number:05d}")
            indexes.append((offset, _open_index(file, path, vocab, data.dtype, progress)))
        return cls(data, int(sizes[0]), indexes)

    @property
    def tokens(self) -> np.ndarray:
        return self.data.tokens

    def positions(self, query: list[int]) -> np.ndarray:
        """Sorted token positions where `query` occurs whole inside one training item."""
        if not query:
            return np.zeros(0, np.int64)
        query = [int(t) for t in query]
        found = [offset + np.asarray(index.positions(query), np.int64)
                 for offset, index in self._indexes]
        for offset, _ in self._indexes[1:]:  # occurrences that cross a shard's edge
            begin = max(0, offset - len(query) + 1)
            around = np.asarray(self.tokens[begin:offset + len(query) - 1], np.int64)
            for start in range(max(0, len(around) - len(query) + 1)):
                if begin + start < offset < begin + start + len(query) and \
                        around[start:start + len(query)].tolist() == query:
                    found.append(np.array([begin + start], np.int64))
        found = np.sort(np.concatenate(found))
        offset = found % self.sample_len
        return found[offset + len(query) <= self.sample_len]

    def count(self, query: list[int]) -> int:
        """Occurrences of `query` inside training items (none across an item boundary)."""
        return len(self.positions(query))

    def item_of(self, positions: np.ndarray) -> np.ndarray:
        return positions // self.sample_len
