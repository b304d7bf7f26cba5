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


@dataclass
class TokenIndex:
    """Training items of `sample_len` tokens in a token file, and a suffix array over it."""

    data: IndexedDataset
    sample_len: int
    _index: object

    @classmethod
    def open(cls, data_dir: str | os.PathLike, index: str | os.PathLike | None = None,
             progress: bool = True) -> TokenIndex:
        """The index of a dataset's training tokens, built first where it does not exist
        (beside train.bin, or at `index`)."""
        data = open_train(data_dir)
        if len(data) == 0:
            raise LmsuiteError(f"{data.idx_path}: holds no training items")
        sizes = np.unique(data.sizes)
        if len(sizes) != 1:
            raise LmsuiteError(f"{data.idx_path}: items of {len(sizes)} lengths; the studies "
                               "read training samples of one length")
        path = Path(index) if index else Path(str(data.bin_path)[:-4] + INDEX_SUFFIX)
        vocab = 2**16 if data.dtype.itemsize == 2 else 2**32
        tg = _tokengrams()
        if not path.is_file():
            if progress:
                say(f"lmsuite: indexing {data.bin_path} ({data.tokens.size:,} tokens) into "
                    f"{path}")

            def build(tmp: Path) -> None:
                with _quiet_stdout():
                    tg.MemmapIndex.build(str(data.bin_path), str(tmp), vocab, False)

            write_file(path, build)
        expected = 8 * data.tokens.size
        if path.stat().st_size != expected:
            raise LmsuiteError(f"{path}: {path.stat().st_size} bytes, an index of "
                               f"{data.bin_path} has {expected}; delete it to build it again")
        return cls(data, int(sizes[0]), tg.MemmapIndex(str(data.bin_path), str(path), vocab))

    @property
    def tokens(self) -> np.ndarray:
        return self.data.tokens

    def positions(self, query: list[int]) -> np.ndarray:
        """Sorted token positions where `query` occurs whole inside one training item."""
        if not query:
            return np.zeros(0, np.int64)
        found = np.sort(np.asarray(self._index.positions([int(t) for t in query]), np.int64))
        offset = found % self.sample_len
        return found[offset + len(query) <= self.sample_len]

    def count(self, query: list[int]) -> int:
        """Occurrences of `query` inside training items (none across an item boundary)."""
        return len(self.positions(query))

    def item_of(self, positions: np.ndarray) -> np.ndarray:
        return positions // self.sample_len
