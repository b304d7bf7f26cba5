"""Pythia's pre-shuffled release as it ships: one document.idx and the .bin cut at byte level
into document-00000-of-NNNNN.bin ..., read in place as the joined file (here scaled down: items
of 65 tokens, batches of 16 rows, shards of a few kilobytes)."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from lmsuite.analysis import memorization as mem
from lmsuite.analysis.index import TokenIndex
from lmsuite.data.indexed import IndexedDataset, IndexedDatasetWriter
from lmsuite.data.order import batch_at
from lmsuite.errors import DataFormatError

ITEM, BATCH = 65, 16


def pythia_layout(folder, shard_bytes, items=200, seed=0):
    """`folder/joined/document.{bin,idx}` and `folder/sharded/` holding the same .bin cut into
    shards of `shard_bytes` bytes beside the same document.idx."""
    rng = np.random.default_rng(seed)
    # a small vocabulary and repeated passages, so that n-grams recur, across shard edges too
    passages = rng.integers(0, 50, size=(10, 40))
    joined, sharded = folder / "joined", folder / "sharded"
    joined.mkdir(parents=True)
    sharded.mkdir()
    with IndexedDatasetWriter(joined / "document", np.uint16) as w:
        for _ in range(items):
            row = rng.integers(0, 50, size=ITEM)
            at = int(rng.integers(0, ITEM - 40))
            row[at:at + 40] = passages[rng.integers(0, 10)]
            w.add_item(row)
    data = (joined / "document.bin").read_bytes()
    pieces = [data[i:i + shard_bytes] for i in range(0, len(data), shard_bytes)]
    for i, piece in enumerate(pieces):
        (sharded / f"document-{i:05d}-of-{len(pieces) - 1:05d}.bin").write_bytes(piece)
    shutil.copy(joined / "document.idx", sharded / "document.idx")
    return joined, sharded, len(pieces)


@pytest.mark.parametrize("shard_bytes", [2000, 1001])  # token-aligned, and cutting a token
def test_shards_read_as_the_joined_file(tmp_path, shard_bytes):
    joined, sharded, count = pythia_layout(tmp_path, shard_bytes)
    assert count > 10
    a, b = IndexedDataset(joined / "document"), IndexedDataset(sharded / "document")
    assert len(b.shards) == count and b.tokens.size == a.tokens.size
    for step in range(len(a) // BATCH):
        assert np.array_equal(batch_at(sharded, step, BATCH), batch_at(joined, step, BATCH))
    for i in range(len(a)):
        assert np.array_equal(b[i], a[i])
    rng = np.random.default_rng(1)
    positions = rng.integers(0, a.tokens.size, size=(50, 3))
    assert np.array_equal(b.tokens[positions], np.asarray(a.tokens)[positions])
    assert np.array_equal(b.tokens[5:a.tokens.size:7], np.asarray(a.tokens)[5::7])
    assert b.tokens[-1] == a.tokens[-1]


def test_the_suffix_index_per_shard_finds_what_the_joined_files_index_finds(tmp_path):
    joined, sharded, count = pythia_layout(tmp_path, 2000)
    whole = TokenIndex.open(joined, tmp_path / "joined.idx", progress=False)
    parts = TokenIndex.open(sharded, progress=False)
    assert len(parts._indexes) == count
    tokens = np.asarray(whole.tokens)
    edges = [int(s) // 2 for s in parts.data.tokens.starts[1:-1]]
    rng = np.random.default_rng(2)
    # queries from anywhere, and queries that straddle a shard's edge
    starts = list(rng.integers(0, tokens.size - 12, size=100)) + [e - 3 for e in edges]
    straddling = 0
    for start in starts:
        for n in (1, 4, 12):
            query = tokens[start:start + n].tolist()
            expected = whole.positions(query)
            assert np.array_equal(parts.positions(query), expected), (start, n)
            straddling += any(p < e < p + n for p in expected.tolist() for e in edges)
    assert straddling > 0
    assert np.array_equal(mem.window_counts(parts, 100, 8), mem.window_counts(whole, 100, 8))


def test_a_missing_or_odd_shard_is_named(tmp_path):
    _, sharded, count = pythia_layout(tmp_path, 2000)
    (sharded / f"document-00003-of-{count - 1:05d}.bin").unlink()
    with pytest.raises(DataFormatError, match="document-00003-of-.*shard missing"):
        IndexedDataset(sharded / "document")
    _, odd, _ = pythia_layout(tmp_path / "odd", 1001)
    with pytest.raises(Exception, match="not cut between tokens"):
        TokenIndex.open(odd, progress=False)


def test_lmsuite_batch_reads_the_shards(tmp_path):
    joined, sharded, _ = pythia_layout(tmp_path, 2000)
    out = tmp_path / "batch.npy"
    done = subprocess.run([sys.executable, "-m", "lmsuite", "batch", str(sharded), "--step", "3",
                           "--batch-size", str(BATCH), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(out), batch_at(joined, 3, BATCH))
