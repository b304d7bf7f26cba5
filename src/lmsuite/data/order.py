"""The one training order: pack documents into seq_len + 1 samples, permute once, batch_at(step)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from lmsuite.data.indexed import IndexedDataset, IndexedDatasetWriter
from lmsuite.durable import write_file
from lmsuite.errors import LmsuiteError
from lmsuite.runs import read_manifest

TRAIN_DOCS_DTYPE = np.dtype([("doc", "<i8"), ("offset", "<i8")])
"""train_docs.npy: per training sample, the source document where it starts and the token
offset inside that document."""


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the packed samples in epoch `epoch`; a function of these three alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def sample_starts(doc_sizes: np.ndarray, doc_ids: np.ndarray, sample_len: int) -> np.ndarray:
    """For each packed sample, (source document, offset) of its first token."""
    doc_starts = np.concatenate(([0], np.cumsum(doc_sizes, dtype=np.int64)[:-1]))
    num_samples = int(doc_sizes.sum()) // sample_len
    starts = np.arange(num_samples, dtype=np.int64) * sample_len
    which = np.searchsorted(doc_starts, starts, side="right") - 1
    out = np.empty(num_samples, TRAIN_DOCS_DTYPE)
    out["doc"] = doc_ids[which]
    out["offset"] = starts - doc_starts[which]
    return out


def write_training_order(documents: IndexedDataset, doc_ids: np.ndarray, seq_len: int,
                         total_samples: int, seed: int, folder: Path,
                         chunk: int = 4096) -> dict:
    """Write train.bin/.idx (item i = the i-th sample trained on) and train_docs.npy.

    The documents (each ending with EOD) are one stream cut into samples of seq_len + 1
    tokens; the tail shorter than a sample is dropped. Epoch e visits every sample once in
    the order `epoch_permutation(n, seed, e)`; epochs follow one another until
    `total_samples` are written.
    """
    sample_len = seq_len + 1
    stream = documents.tokens[: int(documents.sizes.sum(dtype=np.int64))]
    num_samples = len(stream) // sample_len
    if num_samples == 0:
        raise LmsuiteError(f"the training documents hold {len(stream)} tokens, fewer than one "
                           f"sample of seq_len + 1 = {sample_len}")
    samples = stream[: num_samples * sample_len].reshape(num_samples, sample_len)
    starts = sample_starts(documents.sizes.astype(np.int64), doc_ids, sample_len)
    epochs = -(-total_samples // num_samples)
    train_docs = np.empty(total_samples, TRAIN_DOCS_DTYPE)
    with IndexedDatasetWriter(folder / "train", documents.dtype) as writer:
        written = 0
        for epoch in range(epochs):
            order = epoch_permutation(num_samples, seed, epoch)[: total_samples - written]
            train_docs[written:written + len(order)] = starts[order]
            for i in range(0, len(order), chunk):
                writer.add_items(samples[order[i:i + chunk]])
            written += len(order)
    write_file(folder / "train_docs.npy", lambda path: _save_npy(path, train_docs))
    return {"samples_per_epoch": num_samples, "epochs": round(total_samples / num_samples, 4),
            "train_samples": total_samples,
            "dropped_tail_tokens": len(stream) - num_samples * sample_len}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a path
        np.save(f, array)


# --- reading the order back ----------------------------------------------------------------


def train_prefix(data_dir: str | os.PathLike) -> Path:
    """The .bin/.idx prefix of the training samples in `data_dir`: lmsuite's train.* or
    Pythia's document.* (its pre-shuffled files); a prefix itself is accepted too."""
    path = Path(data_dir)
    for name in ("train", "document"):
        if (path / f"{name}.idx").is_file():
            return path / name
    if Path(str(path) + ".idx").is_file():
        return path
    raise LmsuiteError(f"{path}: no train.idx (or Pythia's document.idx) found")


@functools.lru_cache(maxsize=16)
def _open(prefix: str, mtime_ns: int) -> IndexedDataset:
    return IndexedDataset(prefix)


def open_train(data_dir: str | os.PathLike) -> IndexedDataset:
    """The training samples of `data_dir`, opened once and reused while the file is unchanged."""
    prefix = train_prefix(data_dir)
    return _open(str(prefix), Path(str(prefix) + ".idx").stat().st_mtime_ns)


def batch_size_of(data_dir: str | os.PathLike, given: int | None = None) -> int:
    """The batch size a dataset was built for (its manifest's), or `given`; data without a
    manifest (Pythia's pre-shuffled files) needs it given."""
    if given is not None:
        if given <= 0:
            raise LmsuiteError(f"the batch size must be positive, got {given}")
        return given
    manifest = read_manifest(data_dir)
    if manifest is None:
        raise LmsuiteError(f"{data_dir}: no manifest.json to take the batch size from; pass "
                           "batch_size (--batch-size; 1024 for Pythia)")
    return int(manifest["params"]["batch_size"])


def batch_at(data_dir: str | os.PathLike, step: int, batch_size: int | None = None) -> np.ndarray:
    """The exact (batch_size, seq_len + 1) tokens of training step `step`: items
    [step * B, (step + 1) * B) of train.bin, whatever trains on them."""
    data = open_train(data_dir)  # a folder without training samples is named as such first
    batch_size = batch_size_of(data_dir, batch_size)
    if step < 0:
        raise LmsuiteError(f"step must be >= 0, got {step}")
    steps = len(data) // batch_size
    if step >= steps:
        raise LmsuiteError(f"{data.idx_path}: step {step} is past the end; the file holds "
                           f"{len(data)} samples = {steps} steps of batch size {batch_size}")
    return np.array(data.rows(step * batch_size, (step + 1) * batch_size))


def batch_documents(data_dir: str | os.PathLike, step: int, batch_size: int) -> list[list[dict]]:
    """Per row of `batch_at(step)`, the source documents it holds: doc id, the token offset
    where the row enters the document, and how many of the row's tokens come from it."""
    data_dir = Path(data_dir)
    if not (data_dir / "train_docs.npy").is_file():
        raise LmsuiteError(f"{data_dir}: no train_docs.npy; documents can be traced only in "
                           "datasets built by lmsuite")
    train_docs = np.load(data_dir / "train_docs.npy", mmap_mode="r")
    doc_ids = np.load(data_dir / "document_ids.npy", mmap_mode="r")
    sizes = IndexedDataset(data_dir / "documents").sizes
    sample_len = open_train(data_dir).sizes[0]
    rows = []
    for doc, offset in train_docs[step * batch_size:(step + 1) * batch_size]:
        position = int(np.searchsorted(doc_ids, doc))
        offset, left, row = int(offset), int(sample_len), []
        while left > 0 and position < len(sizes):
            take = min(left, int(sizes[position]) - offset)
            row.append({"doc": int(doc_ids[position]), "offset": offset, "tokens": take})
            left, offset, position = left - take, 0, position + 1
        rows.append(row)
    return rows


def item_neighbours(data_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray] | None:
    """Per training item, the token of the document stream just before its first token and the
    one just after its last (-1 at the stream's ends): what a word cut by the item's edge
    continues with, which the item itself cannot tell. None for data without its document
    stream (Pythia's pre-shuffled files)."""
    data_dir = Path(data_dir)
    needed = [data_dir / name for name in ("train_docs.npy", "document_ids.npy",
                                           "documents.idx")]
    if not all(p.is_file() for p in needed):
        return None
    train_docs = np.load(needed[0], mmap_mode="r")
    doc_ids = np.load(needed[1], mmap_mode="r")
    documents = IndexedDataset(data_dir / "documents")
    sizes = documents.sizes.astype(np.int64)
    stream = documents.tokens[: int(sizes.sum())]
    doc_starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    start = doc_starts[np.searchsorted(doc_ids, train_docs["doc"])] + train_docs["offset"]
    end = start + int(open_train(data_dir).sizes[0])
    prev = np.where(start > 0, stream[np.maximum(start - 1, 0)].astype(np.int64), -1)
    following = np.where(end < len(stream),
                         stream[np.minimum(end, len(stream) - 1)].astype(np.int64), -1)
    return prev, following
