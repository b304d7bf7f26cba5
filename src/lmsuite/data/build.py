"""Corpus -> tokens -> (near-dedup) -> train/val files and manifest, for both datasets."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmsuite import __version__
from lmsuite.config import SuiteConfig, changed_settings
from lmsuite.data.corpus import file_sha256, iter_documents, source_files
from lmsuite.data.dedup import NearDuplicateFilter
from lmsuite.data.indexed import IndexedDataset, IndexedDatasetWriter, token_dtype
from lmsuite.data.order import read_manifest, write_training_order
from lmsuite.data.synthetic import write_corpus
from lmsuite.data.tokenizer import (
    eod_id,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from lmsuite.durable import fsync, fsync_tree
from lmsuite.errors import LmsuiteError

DATASETS = ("standard", "deduped")
BATCH_DOCS = 1024


def is_held_out(text: str, seed: int, fraction: float) -> bool:
    """Validation membership from the text and the seed alone: copies of a document go together,
    and both datasets hold out the same documents."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def build_params(suite: SuiteConfig) -> dict:
    """What a built dataset's contents depend on, besides its length. Its length (steps x
    batch_size samples) only appends: every epoch's order is fixed by the seed alone, so a
    longer build begins with the samples of a shorter one."""
    return {"seed": suite.seed, "data": dataclasses.asdict(suite.data),
            "batch_size": suite.train.batch_size}


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == BATCH_DOCS:
            yield batch
            batch = []
    if batch:
        yield batch


def _flat(params: dict, prefix: str = "") -> dict:
    """{"data": {"seq_len": 128}} -> {"data.seq_len": 128}."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def check_settings(out: str | os.PathLike, suite: SuiteConfig) -> None:
    """An error when datasets in `out` exist, built with other settings than the suite's; it
    names each setting that differs."""
    now = _flat(json.loads(json.dumps(build_params(suite))))
    for name in DATASETS:
        manifest = read_manifest(Path(out) / name)
        changed = manifest and changed_settings(_flat(manifest.get("params") or {}), now)
        if changed:
            raise LmsuiteError(f"{Path(out) / name}: built with {changed}. Restore those "
                               "settings, or choose another --out (`lmsuite data build --force` "
                               "rebuilds it in place)")


def _complete(out: Path, suite: SuiteConfig, samples: int) -> bool:
    """True when both datasets exist with the suite's settings and enough samples; an error
    when they exist with other settings."""
    check_settings(out, suite)
    manifests = [read_manifest(out / name) for name in DATASETS]
    return all(m is not None and m["counts"]["train_samples"] >= samples for m in manifests)


def _remove_stale_builds(out: Path) -> None:
    """Delete the temporary folders of builds whose process is gone (killed half-way)."""
    for tmp in out.glob(".build-*"):
        pid = tmp.name.removeprefix(".build-")
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def build_data(suite: SuiteConfig, out: str | os.PathLike, force: bool = False,
               progress: bool = True) -> tuple[Path, Path]:
    """Build `out/standard` and `out/deduped` (skipped when already built with these settings).

    Everything is written under a temporary folder and renamed into place at the end, so a
    build killed half-way leaves no folder that looks complete. One process builds at a time;
    others wait, then find the data built.
    """
    out = Path(out)
    params = build_params(suite)
    total_samples = suite.train.steps * suite.train.batch_size
    if not force and _complete(out, suite, total_samples):
        return out / "standard", out / "deduped"
    with _build_lock(out):
        if not force and _complete(out, suite, total_samples):  # built while this waited
            return out / "standard", out / "deduped"
        _remove_stale_builds(out)
        tmp = out / f".build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            return _build(suite, out, tmp, params, total_samples, progress)
        finally:  # a build that fails (bad input, Ctrl-C) leaves nothing of itself behind
            shutil.rmtree(tmp, ignore_errors=True)


def _build(suite: SuiteConfig, out: Path, tmp: Path, params: dict, total_samples: int,
           progress: bool) -> tuple[Path, Path]:
    data = suite.data

    # 1. Sources: the built-in corpus is written first, then read like any other file.
    synthetic_meta = None
    if data.source == "synthetic":
        corpus = tmp / "synthetic" / "corpus.jsonl"
        synthetic_meta = write_corpus(corpus, data.synthetic, data.documents, suite.seed)
        files = [corpus]
    else:
        files = source_files(list(data.source))

    def documents() -> Iterator[str]:
        return iter_documents(files, data.text_field, data.txt_separator)

    # 2. Tokenizer: given, or trained on the training documents (never on held-out ones).
    count = sum(1 for _ in documents())
    if count == 0:
        named = files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
        raise LmsuiteError(f"{named}: no documents found")
    if data.tokenizer:
        tok = load_tokenizer(data.tokenizer)
        if tok.get_vocab_size() > data.vocab_size:
            raise LmsuiteError(f"{data.tokenizer}: the tokenizer has {tok.get_vocab_size()} "
                               f"tokens, more than [data] vocab_size = {data.vocab_size}")
    else:
        tok = train_tokenizer((t for t in documents()
                               if not is_held_out(t, suite.seed, data.validation_fraction)),
                              data.vocab_size)
    eod, dtype = eod_id(tok), token_dtype(data.vocab_size)

    # 3. One pass: tokenize, hold out, near-dedup, write the documents of both datasets.
    folders = {name: tmp / name for name in DATASETS}
    for folder in folders.values():
        folder.mkdir()
    dedup = NearDuplicateFilter(threshold=data.dedup_threshold)
    doc_ids: dict[str, list[int]] = {name: [] for name in DATASETS}
    val_docs = 0
    bar = tqdm(total=count, unit="doc", desc="tokenize + dedup", disable=not progress)
    with (IndexedDatasetWriter(folders["standard"] / "documents", dtype) as standard,
          IndexedDatasetWriter(folders["deduped"] / "documents", dtype) as deduped,
          IndexedDatasetWriter(folders["standard"] / "val", dtype) as val):
        index = 0
        for batch in _batches(documents()):
            for text, enc in zip(batch, tok.encode_batch_fast(batch, add_special_tokens=False),
                                 strict=True):
                tokens = np.asarray(enc.ids + [eod])
                if is_held_out(text, suite.seed, data.validation_fraction):
                    val.add_item(tokens)
                    val_docs += 1
                else:
                    standard.add_item(tokens)
                    doc_ids["standard"].append(index)
                    if dedup.add(index, text) is None:
                        deduped.add_item(tokens)
                        doc_ids["deduped"].append(index)
                index += 1
            bar.update(len(batch))
    bar.close()
    for suffix in (".bin", ".idx"):
        shutil.copyfile(folders["standard"] / f"val{suffix}", folders["deduped"] / f"val{suffix}")
    with (folders["deduped"] / "removed_duplicates.jsonl").open("w") as f:
        for doc, (kept, similarity) in sorted(dedup.removed.items()):
            f.write(json.dumps({"doc": doc, "duplicate_of": kept,
                                "similarity": round(similarity, 4)}) + "\n")

    # 4. Per dataset: the training order, the tokenizer, the metadata, the manifest.
    sources = [{"path": str(p.relative_to(tmp)) if synthetic_meta else str(p),
                "sha256": file_sha256(p)} for p in files]
    for name, folder in folders.items():
        ids = np.asarray(doc_ids[name], np.int64)
        if len(ids) == 0:
            raise LmsuiteError("every document was held out for validation; lower "
                               "[data] validation_fraction or add documents")
        np.save(folder / "document_ids.npy", ids)
        docs = IndexedDataset(folder / "documents")
        counts = write_training_order(docs, ids, data.seq_len, total_samples, suite.seed, folder)
        save_tokenizer(tok, folder, max_length=data.seq_len)
        if synthetic_meta is not None:
            shutil.copytree(synthetic_meta, folder / synthetic_meta.name)
        manifest = {
            "lmsuite_version": __version__,
            "dataset": name,
            "params": params,
            "sources": sources,
            "tokenizer": {"sha256": file_sha256(folder / "tokenizer.json"),
                          "vocab_size": tok.get_vocab_size(), "eod_id": eod},
            "dtype": dtype.name,
            "dedup": dedup.describe() if name == "deduped" else None,
            "counts": {
                "source_documents": count,
                "validation_documents": val_docs,
                "train_documents": len(ids),
                "removed_duplicates": len(dedup.removed) if name == "deduped" else 0,
                "document_tokens": int(docs.sizes.sum(dtype=np.int64)),
                **counts,
            },
            "sha256": {"train.bin": file_sha256(folder / "train.bin"),
                       "val.bin": file_sha256(folder / "val.bin")},
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    # 5. Into place: the manifest-bearing folders appear only now, each in one rename, once
    # their files are on disk (a machine that goes down leaves no complete-looking dataset).
    fsync_tree(tmp)
    if synthetic_meta is not None:
        target = out / "synthetic"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp / "synthetic", target)
    for name in DATASETS:
        shutil.rmtree(out / name, ignore_errors=True)
        os.replace(folders[name], out / name)
    fsync(out)
    return out / "standard", out / "deduped"

