import struct
import warnings

import numpy as np
import pytest

from lmsuite.data.indexed import IndexedDataset, IndexedDatasetWriter, token_dtype
from lmsuite.data.order import batch_at
from lmsuite.errors import DataFormatError


def megatron():
    warnings.filterwarnings("ignore")
    from megatron.core.datasets import indexed_dataset

    return indexed_dataset


def write(prefix, docs, dtype):
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_item(d)


def random_docs(vocab, n=50, seed=0):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=rng.integers(0, 300)) for _ in range(n)]
    docs[3] = np.zeros(0, np.int64)  # an empty document
    return docs


@pytest.mark.parametrize("vocab", [50304, 70000])
def test_round_trip_keeps_every_document_including_empty_ones(tmp_path, vocab):
    docs = random_docs(vocab)
    write(tmp_path / "d", docs, token_dtype(vocab))
    ds = IndexedDataset(tmp_path / "d")
    assert ds.dtype == (np.uint16 if vocab <= 65536 else np.int32)
    assert len(ds) == len(docs)
    for got, want in zip((ds[i] for i in range(len(ds))), docs, strict=True):
        assert np.array_equal(got, want)
    assert ds.doc_idx.tolist() == list(range(len(docs) + 1))


@pytest.mark.parametrize("vocab", [50304, 70000])
def test_megatron_core_reads_what_lmsuite_writes_item_for_item(tmp_path, vocab):
    docs = random_docs(vocab, seed=1)
    write(tmp_path / "d", docs, token_dtype(vocab))
    theirs = megatron().IndexedDataset(str(tmp_path / "d"))
    assert len(theirs) == len(docs)
    for i, want in enumerate(docs):
        assert np.array_equal(theirs[i], want)
    assert np.array_equal(theirs.document_indices, np.arange(len(docs) + 1))


def test_lmsuite_reads_what_megatrons_builder_writes(tmp_path):
    import torch

    builder = megatron().IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.int32)
    docs = random_docs(100000, seed=2)
    for d in docs[:10]:  # two items per document, as Megatron's sentence splitting does
        builder.add_item(torch.from_numpy(d[: len(d) // 2]))
        builder.add_item(torch.from_numpy(d[len(d) // 2:]))
        builder.end_document()
    builder.finalize(str(tmp_path / "m.idx"))
    ds = IndexedDataset(tmp_path / "m")
    assert len(ds) == 20 and ds.doc_idx.tolist() == list(range(0, 21, 2))
    for i, d in enumerate(docs[:10]):
        assert np.array_equal(np.concatenate([ds[2 * i], ds[2 * i + 1]]), d)


def test_pythia_style_preshuffled_file_gives_batches_without_a_manifest(tmp_path):
    # Pythia's pre-shuffled document.bin/.idx: one 2049-token item per training sample.
    import torch

    rng = np.random.default_rng(3)
    samples = rng.integers(0, 50277, size=(6, 2049)).astype(np.uint16)
    builder = megatron().IndexedDatasetBuilder(str(tmp_path / "document.bin"), dtype=np.uint16)
    for s in samples:
        builder.add_item(torch.from_numpy(s.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "document.idx"))
    assert np.array_equal(batch_at(tmp_path, 1, batch_size=2), samples[2:4])
    with pytest.raises(Exception, match="step 2 is past the end"):
        batch_at(tmp_path, 2, batch_size=3)


def test_reader_does_not_copy_the_file(tmp_path):
    write(tmp_path / "d", random_docs(1000), np.uint16)
    ds = IndexedDataset(tmp_path / "d")
    assert isinstance(ds.tokens, np.memmap)
    assert np.shares_memory(ds[5], ds.tokens) or len(ds[5]) == 0


def corrupt(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, message", [
    (lambda p: corrupt(p.with_suffix(".idx"), 0, b"NOTMAGIC!"), "not a Megatron index"),
    (lambda p: corrupt(p.with_suffix(".idx"), 9, struct.pack("<Q", 2)), "index version 2"),
    (lambda p: corrupt(p.with_suffix(".idx"), 17, bytes([42])), "unknown dtype code 42"),
    (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:-9]),
     "truncated index"),
    (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:20]),
     "truncated index"),
    (lambda p: p.with_suffix(".bin").write_bytes(p.with_suffix(".bin").read_bytes()[:-10]),
     "shorter .* than its index says"),
    (lambda p: p.with_suffix(".bin").unlink(), "file not found"),
])
def test_corrupt_files_raise_a_clear_error_naming_the_file(tmp_path, damage, message):
    prefix = tmp_path / "d"
    write(prefix, random_docs(1000, n=10), np.uint16)
    damage(prefix)
    with pytest.raises(DataFormatError, match=message) as e:
        IndexedDataset(prefix)
    assert str(tmp_path / "d.") in str(e.value)


def test_a_resumed_writer_drops_what_came_after_its_state_and_goes_on(tmp_path):
    # A data build killed mid-write is resumed from its last record: what was written after
    # the record goes, and the file ends as if the writer had never stopped.
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 500, int(n)) for n in rng.integers(0, 40, 30)]
    with IndexedDatasetWriter(tmp_path / "straight", np.uint16) as w:
        for doc in docs:
            w.add_item(doc)
    w = IndexedDatasetWriter(tmp_path / "resumed", np.uint16)
    for doc in docs[:12]:
        w.add_item(doc)
    state = w.state()
    for doc in docs[12:20]:  # written after the record, lost with the process
        w.add_item(doc[::-1])
    w.release()
    resumed = IndexedDatasetWriter(tmp_path / "resumed", np.uint16, resume=state)
    assert resumed.items == 12
    for doc in docs[12:]:
        resumed.add_item(doc)
    resumed.close()
    for suffix in (".bin", ".idx"):
        assert ((tmp_path / f"resumed{suffix}").read_bytes()
                == (tmp_path / f"straight{suffix}").read_bytes())
    assert not list(tmp_path.glob(".*tmp*"))


def test_resuming_a_writer_whose_file_was_cut_short_is_a_clear_error(tmp_path):
    w = IndexedDatasetWriter(tmp_path / "d", np.uint16)
    w.add_item(np.arange(10))
    state = w.state()
    w.release()
    state.tmp_bin.write_bytes(state.tmp_bin.read_bytes()[:5])
    with pytest.raises(DataFormatError, match="expected at least 20 bytes written before, "
                                              "found 5"):
        IndexedDatasetWriter(tmp_path / "d", np.uint16, resume=state)
