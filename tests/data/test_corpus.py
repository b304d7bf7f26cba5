import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmsuite.data.corpus import iter_documents, source_files
from lmsuite.errors import DataFormatError, LmsuiteError

DOCS = ["first document", "zweites Dokument – ünïcödé", "third\nwith a newline"]


def jsonl(docs, field="text"):
    return "".join(json.dumps({field: d, "meta": 1}) + "\n" for d in docs)


def test_every_format_yields_the_same_documents(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl(DOCS))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(jsonl(DOCS))
    zst = zstandard.ZstdCompressor().compress(jsonl(DOCS).encode())
    (tmp_path / "c.jsonl.zst").write_bytes(zst)
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "d.parquet")
    (tmp_path / "e.txt").write_text("<doc>".join(DOCS))
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"):
        assert list(iter_documents([tmp_path / name])) == DOCS, name
    assert list(iter_documents([tmp_path / "e.txt"], txt_separator="<doc>")) == DOCS
    assert list(iter_documents([tmp_path / "e.txt"])) == ["<doc>".join(DOCS)]


def test_txt_separator_splits_across_read_chunks(tmp_path):
    docs = [f"document {i} " + "x" * 700_000 for i in range(4)]
    (tmp_path / "big.txt").write_text("\n\n".join(docs))
    assert list(iter_documents([tmp_path / "big.txt"], txt_separator="\n\n")) == docs


def test_saved_hf_dataset_is_read(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"content": DOCS}).save_to_disk(str(tmp_path / "saved"))
    files = source_files([tmp_path / "saved"])
    assert list(iter_documents(files, text_field="content")) == DOCS


def test_folders_expand_in_sorted_order_skipping_hidden_and_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "2.jsonl").write_text(jsonl(["two"]))
    (tmp_path / "1.jsonl").write_text(jsonl(["one"]))
    (tmp_path / ".hidden.jsonl").write_text(jsonl(["hidden"]))
    (tmp_path / "notes.md").write_text("not a document")
    assert list(iter_documents(source_files([tmp_path]))) == ["one", "two"]


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(LmsuiteError, match="data source not found"):
        source_files([tmp_path / "missing.jsonl"])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataFormatError, match="unsupported document file"):
        source_files([tmp_path / "x.csv"])
    (tmp_path / "bad.jsonl").write_text(jsonl(["ok"]) + "{oops\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_documents([tmp_path / "bad.jsonl"]))
    (tmp_path / "field.jsonl").write_text(jsonl(["ok"], field="body"))
    with pytest.raises(DataFormatError, match=r"field.jsonl:1: no text field 'text'"):
        list(iter_documents([tmp_path / "field.jsonl"]))
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "p.parquet")
    with pytest.raises(DataFormatError, match="no column 'text'"):
        list(iter_documents([tmp_path / "p.parquet"]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="holds no document files"):
        source_files([empty])
