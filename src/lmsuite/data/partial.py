"""An unfinished data build's record of where it stands, so that the next build resumes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from lmsuite.data.indexed import IndexedDatasetWriter, WriterState
from lmsuite.durable import fsync_tree, write_file
from lmsuite.errors import DataFormatError


class PartialBuild:
    """The folder of a build in progress and `partial.json` in it: the build's identity (its
    settings and sources) and the stages done. A build with the same identity takes up where
    the last one stopped; one with another identity starts afresh.

    The tokenizing pass records, now and then, how many documents it has done and where each
    of its writers stands (`save_pass`); a resumed pass goes on from there, so what was written
    after the last record (a process killed mid-write) is dropped.
    """

    def __init__(self, folder: Path, record: dict):
        self.folder = folder
        self.record = record

    @classmethod
    def open(cls, folder: Path, identity: dict, fresh: bool = False) -> PartialBuild:
        """The build in `folder` when it has this identity (and not `fresh`); else a new one."""
        path = folder / "partial.json"
        if not fresh and path.is_file():
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError:  # torn by a crash: not a record to trust
                record = None
            if isinstance(record, dict) and record.get("identity") == identity:
                return cls(folder, record)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        partial = cls(folder, {"identity": identity})
        partial.save()
        return partial

    def get(self, key: str):
        return self.record.get(key)

    def save(self, **stages) -> None:
        """Record `stages` as done: on disk before anything that relies on them."""
        self.record.update(stages)
        write_file(self.folder / "partial.json", json.dumps(self.record, indent=1) + "\n")

    @property
    def documents_done(self) -> int:
        """Documents the tokenizing pass had finished at its last record."""
        return (self.get("pass") or {}).get("documents", 0)

    def save_pass(self, documents: int, writers: dict[str, IndexedDatasetWriter]) -> None:
        """Record that the pass has done its first `documents`, its `writers` standing where
        they are now. Each record stores only the items written since the one before, so a
        long pass records in time proportional to what it has just written."""
        done = self.get("pass") or {"generation": 0, "writers": {}}
        generation = done["generation"] + 1
        chunks = self.folder / "pass"
        chunks.mkdir(exist_ok=True)
        states = {}
        for name, writer in writers.items():
            state = writer.state()
            before = done["writers"].get(name, {"items": 0, "documents": 0})
            np.save(chunks / f"{generation}.{name}.sizes.npy", state.sizes[before["items"]:])
            np.save(chunks / f"{generation}.{name}.doc_idx.npy",
                    state.doc_idx[before["documents"]:])
            states[name] = {"tmp_bin": str(state.tmp_bin.relative_to(self.folder)),
                            "nbytes": state.nbytes, "items": len(state.sizes),
                            "documents": len(state.doc_idx)}
        fsync_tree(chunks)
        self.save(**{"pass": {"documents": documents, "generation": generation,
                              "writers": states}})

    def writer_state(self, name: str) -> WriterState | None:
        """Where writer `name` stood at the pass's last record; None before any record."""
        done = self.get("pass")
        if not done:
            return None
        chunks = [self.folder / "pass" / f"{g}.{name}" for g in range(1, done["generation"] + 1)]
        saved = done["writers"][name]
        sizes = np.concatenate([np.load(f"{c}.sizes.npy") for c in chunks])
        doc_idx = np.concatenate([np.load(f"{c}.doc_idx.npy") for c in chunks])
        if (len(sizes), len(doc_idx)) != (saved["items"], saved["documents"]):
            raise DataFormatError(f"{self.folder / 'pass'}: the records of writer {name} hold "
                                  f"{len(sizes)} items, not the {saved['items']} recorded")
        return WriterState(self.folder / saved["tmp_bin"], saved["nbytes"], sizes, doc_idx)
