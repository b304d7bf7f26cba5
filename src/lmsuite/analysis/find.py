"""Where did training see it? Every occurrence of a text in a dataset's training items, by
step, sample and source document, from the suffix-array index."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmsuite.analysis.index import TokenIndex
from lmsuite.data.indexed import IndexedDataset
from lmsuite.data.order import batch_size_of
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.errors import LmsuiteError
from lmsuite.runs import Run, is_run_folder

CONTEXT = 12
"""Tokens of surrounding text shown on each side of an occurrence."""


@dataclass
class Occurrence:
    step: int
    item: int
    """The training sample: item of train.bin (batch_at(step) holds it)."""
    offset: int
    """Token offset of the match inside the sample."""
    document: int | None
    """The source document (index in the corpus) where the match lies, when known."""
    document_offset: int | None
    text: str
    """The match with its surroundings inside the sample, the match in [brackets]."""


@dataclass
class Found:
    text: str
    variants: dict[str, int]
    """Each token sequence searched (the text as given, and after a space) and its count."""
    count: int
    first_step: int | None
    occurrences: list[Occurrence]
    """In training order, at most `limit` of them."""


def _documents(data_dir: Path):
    """(document ids, start of each document in the stream) where the data keeps its document
    stream (lmsuite's builds), else None."""
    if not (data_dir / "train_docs.npy").is_file():
        return None
    sizes = IndexedDataset(data_dir / "documents").sizes.astype(np.int64)
    return (np.load(data_dir / "document_ids.npy"),
            np.concatenate(([0], np.cumsum(sizes)[:-1])),
            np.load(data_dir / "train_docs.npy", mmap_mode="r"))


def find(target: str | os.PathLike, text: str, dataset: str = "standard", limit: int = 20,
         batch_size: int | None = None) -> Found:
    """Every occurrence of `text` in the training items of a run's dataset (or of a dataset
    folder), tokenized as the dataset was."""
    if not text:
        raise LmsuiteError("the text to find is empty")
    data_dir = Run(target).dataset(dataset) if is_run_folder(target) else Path(target)
    batch_size = batch_size_of(data_dir, batch_size)
    index = TokenIndex.open(data_dir)
    tok = load_tokenizer(data_dir)
    variants = [text] + ([" " + text] if not text[:1].isspace() else [])
    per_variant, found = {}, []
    for variant in variants:
        ids = tok.encode(variant, add_special_tokens=False).ids
        positions = index.positions(ids)
        per_variant[variant] = len(positions)
        found += [(int(p), len(ids)) for p in positions]
    found.sort()
    length = index.sample_len
    documents = _documents(data_dir)
    occurrences = []
    for p, width in found[:limit]:
        item, offset = divmod(p, length)
        row = index.tokens[item * length:(item + 1) * length]
        before = tok.decode(row[max(0, offset - CONTEXT):offset].tolist())
        match = tok.decode(row[offset:offset + width].tolist())
        after = tok.decode(row[offset + width:offset + width + CONTEXT].tolist())
        doc = doc_offset = None
        if documents is not None:
            ids, starts, train_docs = documents
            start = starts[np.searchsorted(ids, train_docs[item]["doc"])] + \
                int(train_docs[item]["offset"]) + offset
            position = int(np.searchsorted(starts, start, side="right") - 1)
            doc, doc_offset = int(ids[position]), int(start - starts[position])
        occurrences.append(Occurrence(item // batch_size, item, offset, doc, doc_offset,
                                      f"{before}[{match}]{after}"))
    return Found(text, per_variant, len(found),
                 found[0][0] // length // batch_size if found else None, occurrences)
