"""Corpus -> tokens -> (near-dedup) -> train/val files and manifest, for both datasets."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lmsuite import __version__
from lmsuite.config import SuiteConfig
from lmsuite.data.corpus import file_sha256, iter_documents, source_files
from lmsuite.data.dedup import NearDuplicateFilter
from lmsuite.data.indexed import IndexedDataset, IndexedDatasetWriter, token_dtype
from lmsuite.data.order import write_training_order
from lmsuite.data.partial import PartialBuild
from lmsuite.data.synthetic import meta_folder, write_corpus
from lmsuite.data.tokenizer import (
    eod_id,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from lmsuite.data.verify import describe_files, seal
from lmsuite.durable import (
    fsync_tree,
    is_temporary,
    put_back_moved_aside,
    replace_folder,
    write_file,
)
from lmsuite.errors import LmsuiteError
from lmsuite.progress import bar as progress_bar
from lmsuite.runs import (
    DATASETS,
    build_settings,
    check_data_settings,
    read_manifest,
    samples_needed,
)

BATCH_DOCS = 1024
PARTIAL = ".build"
"""The folder of a build in progress, under the data folder."""
DOCUMENT_WORK = 2e7
"""A document's tokenizing and deduplication, in the job progress's units (FLOP-equivalents)."""
CHECKPOINT_SECONDS = 60.0
"""How often the tokenizing pass records where it stands, for a resumed build."""


def is_held_out(text: str, seed: int, fraction: float) -> bool:
    """Validation membership from the text and the seed alone: copies of a document go together,
    and both datasets hold out the same documents."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == BATCH_DOCS:
            yield batch
            batch = []
    if batch:
        yield batch


def _complete(out: Path, suite: SuiteConfig, samples: int) -> bool:
    """True when both datasets exist with the suite's settings and enough samples; an error
    when they exist with other settings."""
    check_data_settings(out, suite)
    manifests = [read_manifest(out / name) for name in DATASETS]
    return all(m is not None and m["counts"]["train_samples"] >= samples for m in manifests)


@contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """Within: no other process builds into `out` (the trainers of a suite started at once
    all find the data missing). Released when the process ends, however it ends."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{out}: waiting for another process that is building this data",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _identity(suite: SuiteConfig, params: dict) -> dict:
    """What an unfinished build must share with the next for that one to resume it: the
    settings, the lmsuite version, and each source file as it stood (size, modification)."""
    named = [] if suite.data.source == "synthetic" else source_files(list(suite.data.source))
    if suite.data.tokenizer:
        named.append(Path(suite.data.tokenizer))
    stats = []
    for path in named:
        for part in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if part.is_file():
                stat = part.stat()
                stats.append([str(part), stat.st_size, stat.st_mtime_ns])
    return json.loads(json.dumps({"lmsuite_version": __version__, "params": params,
                                  "files": stats}))


def build_data(suite: SuiteConfig, out: str | os.PathLike, force: bool = False,
               progress: bool = True) -> tuple[Path, Path]:
    """Build `out/standard` and `out/deduped` (skipped when already built with these settings).

    Everything is written under `out/.build` and renamed into place at the end, so a build
    killed half-way leaves no folder that looks complete. An interrupted build (killed,
    Ctrl-C, a machine that went down) is resumed by the next one with the same settings and
    sources, from the last record of its tokenizing pass; a build that fails on bad input
    removes what it wrote. One process builds at a time; others wait, then find the data built.
    """
    out = Path(out)
    params = build_settings(suite)
    total_samples = samples_needed(suite)
    if not force and _complete(out, suite, total_samples):
        return out / "standard", out / "deduped"
    with _build_lock(out):
        put_back_moved_aside(out)  # a build killed while it put its folders in place
        if not force and _complete(out, suite, total_samples):  # built while this waited
            return out / "standard", out / "deduped"
        partial = PartialBuild.open(out / PARTIAL, _identity(suite, params), fresh=force)
        if partial.documents_done:
            print(f"{out}: resuming the interrupted build after {partial.documents_done} "
                  "documents", file=sys.stderr, flush=True)
        try:
            built = _build(suite, out, partial, params, total_samples, progress)
        except LmsuiteError:  # bad input: nothing of this build stays
            shutil.rmtree(partial.folder, ignore_errors=True)
            raise
        except KeyboardInterrupt:
            if partial.documents_done:
                print(f"{out}: build interrupted; the next build with these settings resumes "
                      f"after document {partial.documents_done}", file=sys.stderr, flush=True)
            raise
        shutil.rmtree(partial.folder, ignore_errors=True)
        return built


def _build(suite: SuiteConfig, out: Path, partial: PartialBuild, params: dict,
           total_samples: int, progress: bool) -> tuple[Path, Path]:
    data, tmp = suite.data, partial.folder

    # 1. Sources: the built-in corpus is written first, then read like any other file.
    synthetic_meta = None
    if data.source == "synthetic":
        corpus = tmp / "synthetic" / "corpus.jsonl"
        synthetic_meta = meta_folder(corpus)
        if not partial.get("corpus"):
            shutil.rmtree(corpus.parent, ignore_errors=True)
            write_corpus(corpus, data.synthetic, data.documents, suite.seed)
            fsync_tree(corpus.parent)
            partial.save(corpus=True)
        files = [corpus]
    else:
        files = source_files(list(data.source))

    def documents() -> Iterator[str]:
        return iter_documents(files, data.text_field, data.txt_separator, data.encoding,
                              data.encoding_errors)

    # 2. Tokenizer: given, or trained on the training documents (never on held-out ones).
    count = partial.get("count")
    if count is None:
        count = sum(1 for _ in documents())
        if count == 0:
            named = files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
            raise LmsuiteError(f"{named}: no documents found")
        partial.save(count=count)
    tok = _tokenizer(suite, partial, documents)

    # 3. One pass: tokenize, hold out, near-dedup, write the documents of both datasets.
    folders = {name: tmp / name for name in DATASETS}
    if not partial.get("pass_done"):
        _tokenize_pass(suite, partial, documents(), count, tok, progress)
    passed = partial.get("pass_done")

    # 4. Per dataset: the training order, the tokenizer, the metadata, the manifest.
    eod, dtype = eod_id(tok), token_dtype(data.vocab_size)
    sources = [{"path": str(p.relative_to(tmp)) if synthetic_meta else str(p),
                "sha256": file_sha256(p)} for p in files]
    for name, folder in folders.items():
        for leftover in folder.iterdir():  # of this stage, interrupted and now resumed
            if is_temporary(leftover):
                leftover.unlink()
        ids = np.load(folder / "document_ids.npy")
        docs = IndexedDataset(folder / "documents")
        counts = write_training_order(docs, ids, data.seq_len, total_samples, suite.seed, folder)
        save_tokenizer(tok, folder, max_length=data.seq_len)
        if synthetic_meta is not None:
            shutil.rmtree(folder / synthetic_meta.name, ignore_errors=True)
            shutil.copytree(synthetic_meta, folder / synthetic_meta.name)
        manifest = {
            "lmsuite_version": __version__,
            "dataset": name,
            "params": params,
            "sources": sources,
            "tokenizer": {"sha256": file_sha256(folder / "tokenizer.json"),
                          "vocab_size": tok.get_vocab_size(), "eod_id": eod},
            "dtype": dtype.name,
            "dedup": _dedup_filter(suite).describe() if name == "deduped" else None,
            "counts": {
                "source_documents": count,
                "validation_documents": passed["validation_documents"],
                "train_documents": len(ids),
                "removed_duplicates": passed["removed_duplicates"] if name == "deduped" else 0,
                "document_tokens": int(docs.sizes.sum(dtype=np.int64)),
                **counts,
            },
            "sha256": {"train.bin": file_sha256(folder / "train.bin"),
                       "val.bin": file_sha256(folder / "val.bin")},
            "files": describe_files(folder),
        }
        write_file(folder / "manifest.json", seal(manifest))

    # 5. Into place: the manifest-bearing folders appear only now, each in one rename, once
    # their files are on disk (a machine that goes down leaves no complete-looking dataset).
    fsync_tree(tmp)
    if synthetic_meta is not None:
        replace_folder(tmp / "synthetic", out / "synthetic")
    for name in DATASETS:
        replace_folder(folders[name], out / name)
    return out / "standard", out / "deduped"


def _tokenizer(suite: SuiteConfig, partial: PartialBuild,
               documents: Callable[[], Iterator[str]]) -> Tokenizer:
    """The suite's tokenizer; a trained one is kept in the partial build for a resumed one."""
    data = suite.data
    if data.tokenizer:
        tok = load_tokenizer(data.tokenizer)
        if tok.get_vocab_size() != data.vocab_size:
            raise LmsuiteError(f"{data.tokenizer}: the tokenizer has {tok.get_vocab_size()} "
                               f"tokens, [data] vocab_size = {data.vocab_size} (leave it out "
                               "to follow the tokenizer)")
        return tok
    path = partial.folder / "tokenizer.json"
    if not partial.get("tokenizer"):
        trained = train_tokenizer((t for t in documents()
                                   if not is_held_out(t, suite.seed, data.validation_fraction)),
                                  data.vocab_size)
        write_file(path, lambda tmp: trained.save(str(tmp)))
        partial.save(tokenizer=True)
    # Read back from the file in both cases, so a resumed build tokenizes as a fresh one.
    return load_tokenizer(path)


def _dedup_filter(suite: SuiteConfig) -> NearDuplicateFilter:
    return NearDuplicateFilter(threshold=suite.data.dedup_threshold)


def _tokenize_pass(suite: SuiteConfig, partial: PartialBuild, documents: Iterator[str],
                   count: int, tok: Tokenizer, progress: bool) -> None:
    """Tokenize every document, hold out the validation ones, near-dedup the rest, and write
    standard/{documents,val} and deduped/documents. Every CHECKPOINT_SECONDS it records where
    it stands; resumed, it replays the held-out and dedup decisions of the documents done
    before (cheap: no tokenizing, no writing) and goes on writing after them."""
    data, tmp = suite.data, partial.folder
    eod, dtype = eod_id(tok), token_dtype(data.vocab_size)
    done = partial.documents_done
    folders = {name: tmp / name for name in DATASETS}
    if not done:  # files of a pass that stopped before its first record are of no use
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
    writers = {"standard": IndexedDatasetWriter(folders["standard"] / "documents", dtype,
                                                partial.writer_state("standard")),
               "deduped": IndexedDatasetWriter(folders["deduped"] / "documents", dtype,
                                               partial.writer_state("deduped")),
               "val": IndexedDatasetWriter(folders["standard"] / "val", dtype,
                                           partial.writer_state("val"))}
    dedup = _dedup_filter(suite)
    doc_ids: dict[str, list[int]] = {name: [] for name in DATASETS}
    val_docs = index = 0
    recorded = time.monotonic()
    bar = progress_bar(count, "tokenize + dedup", "doc", enabled=progress, weight=DOCUMENT_WORK)
    try:
        for batch in _batches(documents):
            if index < done:  # decided before the interruption: replay, write nothing
                replayed, batch = batch[:done - index], batch[done - index:]
                for text in replayed:
                    if is_held_out(text, suite.seed, data.validation_fraction):
                        val_docs += 1
                    else:
                        doc_ids["standard"].append(index)
                        if dedup.add(index, text) is None:
                            doc_ids["deduped"].append(index)
                    index += 1
                bar.update(len(replayed))
                if index == done:
                    _check_replay(partial, writers, doc_ids, val_docs)
            if not batch:
                continue
            for text, enc in zip(batch, tok.encode_batch_fast(batch, add_special_tokens=False),
                                 strict=True):
                tokens = np.asarray(enc.ids + [eod])
                if is_held_out(text, suite.seed, data.validation_fraction):
                    writers["val"].add_item(tokens)
                    val_docs += 1
                else:
                    writers["standard"].add_item(tokens)
                    doc_ids["standard"].append(index)
                    if dedup.add(index, text) is None:
                        writers["deduped"].add_item(tokens)
                        doc_ids["deduped"].append(index)
                index += 1
            bar.update(len(batch))
            if time.monotonic() - recorded >= CHECKPOINT_SECONDS:
                partial.save_pass(index, writers)
                recorded = time.monotonic()
        if index != count or index < done:
            raise LmsuiteError(f"{tmp}: the sources now hold {index} documents, not {count} "
                               "as when this build began; run the build again to start afresh")
    except BaseException:
        bar.close()
        for writer in writers.values():
            writer.release()  # kept for a resumed build, which goes on from the last record
        raise
    bar.close()
    for writer in writers.values():
        writer.close()
    for suffix in (".bin", ".idx"):
        shutil.copyfile(folders["standard"] / f"val{suffix}", folders["deduped"] / f"val{suffix}")
    with (folders["deduped"] / "removed_duplicates.jsonl").open("w") as f:
        for doc, (kept, similarity) in sorted(dedup.removed.items()):
            f.write(json.dumps({"doc": doc, "duplicate_of": kept,
                                "similarity": round(similarity, 4)}) + "\n")
    for name, ids in doc_ids.items():
        if not ids:
            raise LmsuiteError("every document was held out for validation; lower "
                               "[data] validation_fraction or add documents")
        np.save(folders[name] / "document_ids.npy", np.asarray(ids, np.int64))
    fsync_tree(tmp)
    partial.save(pass_done={"validation_documents": val_docs,
                            "removed_duplicates": len(dedup.removed)})


def _check_replay(partial: PartialBuild, writers: dict[str, IndexedDatasetWriter],
                  doc_ids: dict[str, list[int]], val_docs: int) -> None:
    """The replayed decisions must account for what the interrupted pass wrote."""
    if (writers["standard"].items, writers["deduped"].items, writers["val"].items) != (
            len(doc_ids["standard"]), len(doc_ids["deduped"]), val_docs):
        raise LmsuiteError(f"{partial.folder}: the sources do not give what the interrupted "
                           "build wrote from them; run the build again to start afresh")
