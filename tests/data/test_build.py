import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmsuite import durable
from lmsuite.config import save_suite
from lmsuite.data.build import build_data
from lmsuite.data.indexed import IndexedDataset
from lmsuite.data.order import batch_at, batch_documents
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.errors import LmsuiteError
from tests.conftest import assert_on_disk_before_renamed, record_fsyncs_and_renames, small_suite

PYTHIA_TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "pythia" / "20B_tokenizer.json"
FILES = {"tokenizer.json", "manifest.json", "documents.bin", "documents.idx", "train.bin",
         "train.idx", "val.bin", "val.idx", "train_docs.npy"}


def stream_and_starts(folder):
    """The documents as one token stream, and where each source document starts in it."""
    docs = IndexedDataset(folder / "documents")
    ids = np.load(folder / "document_ids.npy")
    starts = np.concatenate(([0], np.cumsum(docs.sizes, dtype=np.int64)[:-1]))
    return np.asarray(docs.tokens[: docs.sizes.sum()]), dict(zip(ids.tolist(), starts.tolist(),
                                                                 strict=True))


def folder_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["standard", "deduped"])
def test_dataset_folder_holds_the_contract_files(built_data, name):
    _, out = built_data
    assert {p.name for p in (out / name).iterdir()} >= FILES
    assert (out / name / "corpus.meta" / "ground_truth.json").is_file()
    assert (out / "standard" / "tokenizer.json").read_bytes() == \
        (out / "deduped" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("name", ["standard", "deduped"])
def test_batch_at_equals_slicing_the_concatenated_stream(built_data, name):
    suite, out = built_data
    folder = out / name
    stream, starts = stream_and_starts(folder)
    train_docs = np.load(folder / "train_docs.npy")
    length = suite.data.seq_len + 1
    b = suite.train.batch_size
    for step in (0, 1, 57, suite.train.steps - 1):
        batch = batch_at(folder, step)
        assert batch.shape == (b, length)
        for row, (doc, offset) in zip(batch, train_docs[step * b:(step + 1) * b], strict=True):
            start = starts[int(doc)] + int(offset)
            assert np.array_equal(row, stream[start:start + length])


@pytest.mark.parametrize("name", ["standard", "deduped"])
def test_each_training_token_appears_once_per_epoch(built_data, name):
    suite, out = built_data
    folder = out / name
    manifest = json.loads((folder / "manifest.json").read_text())
    per_epoch = manifest["counts"]["samples_per_epoch"]
    assert manifest["counts"]["epochs"] > 1  # the test covers a whole epoch and the next
    stream, starts = stream_and_starts(folder)
    length = suite.data.seq_len + 1
    train_docs = np.load(folder / "train_docs.npy")
    positions = np.array([starts[int(d)] + int(o) for d, o in train_docs[:per_epoch]])
    assert sorted(positions.tolist()) == list(range(0, per_epoch * length, length))
    assert len(stream) - per_epoch * length == manifest["counts"]["dropped_tail_tokens"] < length
    second = train_docs[per_epoch: 2 * per_epoch]
    assert len(set(map(tuple, second.tolist()))) == len(second)  # no sample twice in an epoch
    assert not np.array_equal(second[:50], train_docs[:50])  # each epoch its own order


def test_held_out_documents_are_never_trained_on_and_the_same_in_both(built_data):
    suite, out = built_data
    standard = set(np.load(out / "standard" / "document_ids.npy").tolist())
    deduped = set(np.load(out / "deduped" / "document_ids.npy").tolist())
    assert (out / "standard" / "val.bin").read_bytes() == (out / "deduped" / "val.bin").read_bytes()
    val = IndexedDataset(out / "standard" / "val")
    manifest = json.loads((out / "standard" / "manifest.json").read_text())["counts"]
    assert len(val) == manifest["validation_documents"] > 0
    assert len(standard) + len(val) == suite.data.documents
    assert deduped < standard
    trained = {int(d) for d in np.load(out / "standard" / "train_docs.npy")["doc"]}
    assert trained <= standard
    tok = load_tokenizer(out / "standard")
    corpus = [json.loads(line)["text"] for line in
              (out / "synthetic" / "corpus.jsonl").read_text().splitlines()]
    val_texts = {tok.decode(val[i][:-1].tolist()) for i in range(len(val))}
    assert all(corpus[i] not in val_texts for i in standard)


def test_deduplicated_dataset_drops_the_planted_copies(built_data):
    _, out = built_data
    meta = json.loads((out / "deduped" / "corpus.meta" / "documents.json").read_text())
    removed = [json.loads(line) for line in
               (out / "deduped" / "removed_duplicates.jsonl").read_text().splitlines()]
    standard = set(np.load(out / "standard" / "document_ids.npy").tolist())
    deduped = set(np.load(out / "deduped" / "document_ids.npy").tolist())
    assert {r["doc"] for r in removed} == standard - deduped
    # A planted copy is one whose group already appeared among the training documents (the
    # first of a group may have been held out for validation).
    planted, seen = set(), set()
    for i in sorted(standard):
        group = meta["group"][i]
        if group >= 0 and group in seen:
            planted.add(i)
        seen.add(group)
    dropped = {r["doc"] for r in removed}
    assert len(dropped & planted) >= 0.98 * len(planted) and len(dropped - planted) <= 2
    assert all(meta["group"][r["doc"]] == meta["group"][r["duplicate_of"]] for r in removed
               if r["doc"] in planted)


def test_manifest_records_hashes_parameters_and_counts(built_data):
    import hashlib

    suite, out = built_data
    for name in ("standard", "deduped"):
        m = json.loads((out / name / "manifest.json").read_text())
        assert m["sha256"]["train.bin"] == hashlib.sha256(
            (out / name / "train.bin").read_bytes()).hexdigest()
        assert m["tokenizer"]["sha256"] == hashlib.sha256(
            (out / name / "tokenizer.json").read_bytes()).hexdigest()
        assert m["params"]["seed"] == suite.seed and m["params"]["data"]["seq_len"] == 32
        assert m["params"]["batch_size"] == suite.train.batch_size
        assert m["counts"]["train_samples"] == suite.train.steps * suite.train.batch_size
        assert m["sources"][0]["path"] == "synthetic/corpus.jsonl"
        assert len(m["sources"][0]["sha256"]) == 64


def test_same_config_gives_byte_identical_files_and_order_depends_only_on_data_and_seed(
        built_data, tmp_path):
    suite, out = built_data
    other = dataclasses.replace(
        suite, name="renamed", models=suite.models[:1],
        train=dataclasses.replace(suite.train, micro_batch_size=2, checkpoint_every=7))
    build_data(other, tmp_path / "again", progress=False)
    for name in ("standard", "deduped"):
        assert folder_bytes(out / name) == folder_bytes(tmp_path / "again" / name)
    reseeded = dataclasses.replace(suite, seed=99)
    build_data(reseeded, tmp_path / "seed99", progress=False)
    assert (tmp_path / "seed99" / "standard" / "train.bin").read_bytes() != \
        (out / "standard" / "train.bin").read_bytes()


def test_finished_build_is_skipped_and_a_different_one_refused(built_data):
    suite, out = built_data
    before = (out / "standard" / "train.bin").stat().st_mtime_ns
    build_data(suite, out, progress=False)
    assert (out / "standard" / "train.bin").stat().st_mtime_ns == before
    changed = dataclasses.replace(suite, data=dataclasses.replace(suite.data, seq_len=16))
    with pytest.raises(LmsuiteError, match="standard: built with data.seq_len = 32; the config "
                                           "now has data.seq_len = 16"):
        build_data(changed, out, progress=False)


def test_a_setting_only_one_side_knows_does_not_refuse_a_build(built_data, tmp_path):
    # A field that another lmsuite version added to [data] is not compared.
    import shutil

    suite, out = built_data
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    for name in ("standard", "deduped"):
        manifest = json.loads((copy / name / "manifest.json").read_text())
        manifest["params"]["data"]["added_later"] = 1
        (copy / name / "manifest.json").write_text(json.dumps(manifest))
    before = (copy / "standard" / "train.bin").stat().st_mtime_ns
    build_data(suite, copy, progress=False)
    assert (copy / "standard" / "train.bin").stat().st_mtime_ns == before


def test_build_killed_half_way_leaves_no_folder_that_looks_complete(tmp_path):
    suite = small_suite(documents=3000)
    config = tmp_path / "suite.toml"
    save_suite(suite, config)
    out = tmp_path / "data"
    for delay in (1.0, 2.5, 4.0):
        proc = subprocess.Popen([sys.executable, "-m", "lmsuite", "data", "build", str(config),
                                 "--out", str(out)], stderr=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name in ("standard", "deduped"):
            manifest = out / name / "manifest.json"
            # Either no dataset folder at all, or a complete one.
            assert not (out / name).exists() or (manifest.is_file() and
                                                 (out / name / "train.bin").is_file())
    build_data(suite, out, progress=False)
    assert not (out / ".build").exists()
    assert (out / "deduped" / "manifest.json").is_file()


def test_a_dataset_is_on_disk_before_its_rename_makes_it_visible(tmp_path, monkeypatch):
    events = record_fsyncs_and_renames(monkeypatch)
    out = tmp_path / "data"
    build_data(small_suite(documents=300), out, progress=False)
    for name in ("standard", "deduped"):
        assert_on_disk_before_renamed(events, out / name)


def test_a_forced_rebuild_that_fails_at_the_last_rename_keeps_the_old_dataset_whole(
        tmp_path, monkeypatch):
    suite, out = small_suite(documents=300), tmp_path / "data"
    build_data(suite, out, progress=False)
    before = folder_bytes(out / "standard")
    real_replace = os.replace

    def fail_on_the_new_standard(src, dst):
        if Path(src).parent.name == ".build" and Path(src).name == "standard":
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(durable.os, "replace", fail_on_the_new_standard)
    with pytest.raises(OSError, match="disk gone"):
        build_data(suite, out, force=True, progress=False)
    monkeypatch.undo()
    assert folder_bytes(out / "standard") == before
    assert not list(out.glob(".*.old-*"))
    build_data(suite, out, force=True, progress=False)
    assert folder_bytes(out / "standard") == before  # the same settings: the same bytes
    assert not list(out.glob(".*.old-*")) and not (out / ".build").exists()


def test_builds_started_at_once_build_once(tmp_path):
    # The trainers of a suite started at once all find the data missing: one builds it, the
    # others wait for it instead of building it again and replacing it under the first.
    suite = small_suite(documents=1500)
    config = tmp_path / "suite.toml"
    save_suite(suite, config)
    out = tmp_path / "data"
    procs = [subprocess.Popen([sys.executable, "-m", "lmsuite", "data", "build", str(config),
                               "--out", str(out)], stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True) for _ in range(3)]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert sum("tokenize + dedup" in e for e in errs) == 1  # one build's progress bar
    assert (out / "deduped" / "manifest.json").is_file() and not (out / ".build").exists()


def test_batch_cli_saves_the_exact_batch_and_names_its_documents(built_data, tmp_path, capsys):
    from lmsuite.cli import main

    _, out = built_data
    main(["batch", str(out / "standard"), "--step", "5", "--out", str(tmp_path / "b.npy"),
          "--text", "--docs"])
    printed = capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "b.npy"), batch_at(out / "standard", 5))
    rows = batch_documents(out / "standard", 5, 8)
    assert all(sum(d["tokens"] for d in row) == 33 for row in rows)
    # Each row's documents head its text.
    assert f"--- row 0 (item 40): doc {rows[0][0]['doc']} from token {rows[0][0]['offset']}" \
        in printed
    assert "<|endoftext|>" in printed


def test_batch_at_is_where_readme_says(built_data):
    import lmsuite.data

    _, out = built_data
    assert np.array_equal(lmsuite.data.batch_at(out / "standard", 2), batch_at(out / "standard", 2))


def test_step_past_the_end_is_a_clear_error(built_data):
    suite, out = built_data
    with pytest.raises(LmsuiteError, match=f"step {suite.train.steps} is past the end"):
        batch_at(out / "standard", suite.train.steps)
    with pytest.raises(LmsuiteError, match="nowhere: no train.idx"):
        batch_at(out / "nowhere", 0)


def test_samples_without_a_manifest_need_a_batch_size(built_data, tmp_path):
    import shutil

    _, out = built_data
    for suffix in (".bin", ".idx"):
        shutil.copyfile(out / "standard" / f"train{suffix}", tmp_path / f"train{suffix}")
    with pytest.raises(LmsuiteError, match=r"no manifest.json to take the batch size from; "
                                           r"pass batch_size \(--batch-size"):
        batch_at(tmp_path, 0)
    assert np.array_equal(batch_at(tmp_path, 3, 8), batch_at(out / "standard", 3))


@pytest.mark.skipif(not PYTHIA_TOKENIZER.is_file(), reason="Pythia's tokenizer is not available")
def test_build_with_pythias_tokenizer(tmp_path):
    from lmsuite.model.neox import config_for_size

    # No vocab_size: it follows the tokenizer; the model's vocabulary is padded as Pythia's.
    suite = small_suite(documents=300, tokenizer=str(PYTHIA_TOKENIZER), vocab_size=None)
    assert suite.data.vocab_size == 50277
    standard, _ = build_data(suite, tmp_path, progress=False)
    m = json.loads((standard / "manifest.json").read_text())
    assert m["tokenizer"]["vocab_size"] == 50277 and m["dtype"] == "uint16"
    assert m["tokenizer"]["eod_id"] == 0
    cfg = config_for_size(suite.models[0], suite.data.vocab_size, suite.data.seq_len)
    assert cfg.vocab_size == 50304
    tok = load_tokenizer(standard)
    assert tok.decode(batch_at(standard, 0)[0].tolist()).strip()


def test_the_vocabulary_follows_a_given_tokenizer_and_must_match_it(tmp_path):
    from lmsuite.config import ConfigError
    from lmsuite.data.tokenizer import save_tokenizer, train_tokenizer

    save_tokenizer(train_tokenizer(["some words here and there"] * 20, 300), tmp_path / "tok")
    path = str(tmp_path / "tok" / "tokenizer.json")
    size = load_tokenizer(path).get_vocab_size()
    assert small_suite(documents=50, tokenizer=path, vocab_size=None).data.vocab_size == size
    with pytest.raises(ConfigError, match=f"vocab_size must be the tokenizer's size, {size} "
                                          "tokens in .*got 4096"):
        small_suite(documents=50, tokenizer=path, vocab_size=4096)
    with pytest.raises(ConfigError, match="vocab_size must be given, or the tokenizer file"):
        small_suite(documents=50, tokenizer=str(tmp_path / "none.json"), vocab_size=None)


@pytest.mark.parametrize("lines, message", [
    ("", "no documents found"),
    ('{"text": "a document"}\n{"body": "no text field"}\n', "docs.jsonl:2: no text field"),
])
def test_a_failed_build_says_why_and_leaves_nothing_behind(tmp_path, lines, message):
    (tmp_path / "docs.jsonl").write_text(lines)
    suite = small_suite(source=[str(tmp_path / "docs.jsonl")])
    with pytest.raises(LmsuiteError, match=message):
        build_data(suite, tmp_path / "d", progress=False)
    assert [p.name for p in (tmp_path / "d").iterdir()] == [".build.lock"]


def test_a_longer_build_begins_with_the_samples_of_a_shorter_one(built_data, tmp_path):
    suite, out = built_data
    short = dataclasses.replace(suite, train=dataclasses.replace(suite.train, steps=100))
    build_data(short, tmp_path, progress=False)
    head = (tmp_path / "deduped" / "train.bin").read_bytes()
    assert (out / "deduped" / "train.bin").read_bytes()[: len(head)] == head
    assert len(head) == 100 * 8 * 33 * 2
    build_data(suite, tmp_path, progress=False)  # more steps: rebuilt longer, same prefix
    assert (tmp_path / "deduped" / "train.bin").read_bytes() == \
        (out / "deduped" / "train.bin").read_bytes()


class CountingTokenizer:
    """A tokenizer that counts the documents it encodes."""

    def __init__(self, tok):
        self._tok, self.encoded = tok, 0

    def encode_batch_fast(self, batch, **kwargs):
        self.encoded += len(batch)
        return self._tok.encode_batch_fast(batch, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_an_interrupted_build_resumes_after_its_last_record_and_gives_the_same_files(
        tmp_path, monkeypatch, capsys):
    from lmsuite.data import build

    suite = small_suite(documents=1000)
    straight = tmp_path / "straight"
    build_data(suite, straight, progress=False)
    monkeypatch.setattr(build, "BATCH_DOCS", 100)
    monkeypatch.setattr(build, "CHECKPOINT_SECONDS", 0.0)  # a record after every batch
    batches = build._batches

    def interrupted(texts):  # Ctrl-C while the sixth batch is read
        for number, batch in enumerate(batches(texts)):
            if number == 5:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(build, "_batches", interrupted)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_data(suite, out, progress=False)
    assert "resumes after document 500" in capsys.readouterr().err
    assert not (out / "standard").exists() and not (out / "deduped").exists()
    monkeypatch.setattr(build, "_batches", batches)
    tokenizers = []
    load = build.load_tokenizer
    monkeypatch.setattr(build, "load_tokenizer",
                        lambda path: tokenizers.append(CountingTokenizer(load(path))) or
                        tokenizers[-1])
    build_data(suite, out, progress=False)
    assert sum(t.encoded for t in tokenizers) == 500  # only the documents after the record
    for name in ("standard", "deduped", "synthetic"):
        assert folder_bytes(out / name) == folder_bytes(straight / name)
    assert sorted(p.name for p in out.iterdir()) == [".build.lock", "deduped", "standard",
                                                     "synthetic"]


def test_a_build_killed_mid_pass_resumes_to_the_same_files(tmp_path, capsys):
    suite = small_suite(documents=6000)
    config = tmp_path / "suite.toml"
    save_suite(suite, config)
    out = tmp_path / "killed"
    script = ("import sys\nfrom lmsuite.config import load_suite\nfrom lmsuite.data import build\n"
              "build.BATCH_DOCS = 100\nbuild.CHECKPOINT_SECONDS = 0.0\n"
              "build.build_data(load_suite(sys.argv[1]), sys.argv[2], progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(config), str(out)])
    record, done = out / ".build" / "partial.json", 0
    deadline = time.monotonic() + 300
    while done < 1000 and time.monotonic() < deadline:
        assert proc.poll() is None, "the build ended before it could be killed"
        time.sleep(0.01)
        try:
            done = json.loads(record.read_text()).get("pass", {}).get("documents", 0)
        except (OSError, json.JSONDecodeError):
            continue
    proc.kill()  # mid-pass: its writers hold documents past the last record
    proc.wait()
    assert done >= 1000 and not (out / "standard").exists()
    capsys.readouterr()
    build_data(suite, out, progress=False)
    resumed_after = re.search(r"resuming the interrupted build after (\d+) documents",
                              capsys.readouterr().err)
    assert resumed_after and int(resumed_after.group(1)) >= done
    straight = tmp_path / "straight"
    build_data(suite, straight, progress=False)
    for name in ("standard", "deduped"):
        assert folder_bytes(out / name) == folder_bytes(straight / name)


def test_a_build_interrupted_after_its_pass_resumes_without_tokenizing_again(
        built_data, tmp_path, monkeypatch):
    from lmsuite.data import build

    suite, straight = built_data
    write, calls = build.write_training_order, []

    def interrupted(docs, ids, seq_len, samples, seed, folder):  # killed writing the 2nd order
        calls.append(folder)
        if len(calls) == 2:
            (folder / ".train.bin.tmp-99999").write_bytes(b"half of a file")
            raise KeyboardInterrupt
        return write(docs, ids, seq_len, samples, seed, folder)

    monkeypatch.setattr(build, "write_training_order", interrupted)
    out = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        build_data(suite, out, progress=False)
    monkeypatch.setattr(build, "write_training_order", write)
    reads = []
    iter_documents = build.iter_documents
    monkeypatch.setattr(build, "iter_documents",
                        lambda *args: reads.append(args) or iter_documents(*args))
    build_data(suite, out, progress=False)
    assert reads == []  # no pass over the documents: not counted, tokenized nor deduplicated
    for name in ("standard", "deduped"):
        assert folder_bytes(out / name) == folder_bytes(straight / name)
