"""Is a built dataset still what its manifest says? Checked before every training run, cheaply:
each file's size always, and a hash of sampled blocks (64 blocks of 64 KiB spread over the
file, all of it when smaller), so that a damaged or swapped file is found without reading a
dataset of hundreds of gigabytes at each start. `lmsuite data verify --full` reads every byte
against the full sha256. The manifest carries a hash of its own content, so a manifest edited
by hand is found too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lmsuite.errors import DataFormatError

BLOCKS, BLOCK = 64, 1 << 16
CHECKED = ("train.bin", "train.idx", "val.bin", "val.idx", "tokenizer.json")
"""The files training reads, recorded in the manifest's "files"."""
REQUIRED = {"params": dict, "tokenizer": dict, "counts": dict, "sha256": dict}


def sampled_sha256(path: Path) -> str:
    """sha256 of the file's size and of BLOCKS blocks spread evenly over it (the whole file
    when it holds no more than that)."""
    size = path.stat().st_size
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with path.open("rb") as f:
        if size <= BLOCKS * BLOCK:
            digest.update(f.read())
        else:
            for i in range(BLOCKS):
                f.seek((size - BLOCK) * i // (BLOCKS - 1))
                digest.update(f.read(BLOCK))
    return digest.hexdigest()


def describe_files(folder: Path) -> dict:
    """The manifest's "files": size and sampled hash of each file training reads."""
    return {name: {"bytes": (folder / name).stat().st_size,
                   "sampled_sha256": sampled_sha256(folder / name)}
            for name in CHECKED if (folder / name).is_file()}


def seal(manifest: dict) -> dict:
    """The manifest with "check": the sha256 of the rest of it."""
    body = {k: v for k, v in manifest.items() if k != "check"}
    return {**body, "check": hashlib.sha256(json.dumps(body, sort_keys=True).encode())
            .hexdigest()}


def check_manifest_shape(manifest: object, path: Path) -> dict:
    """A manifest with the fields training reads, or an error naming the one that is wrong."""
    if not isinstance(manifest, dict):
        raise DataFormatError(f"{path}: expected a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise DataFormatError(f"{path}: field {key!r} missing or not a JSON "
                                  f"{'object' if kind is dict else kind.__name__}; rebuild the "
                                  "dataset")
    for key, where in (("vocab_size", "tokenizer"), ("train_samples", "counts"),
                       ("batch_size", "params")):
        value = manifest[where].get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DataFormatError(f"{path}: {where}.{key} must be a positive integer, got "
                                  f"{value!r}")
    return manifest


def verify(folder: str | os.PathLike, manifest: dict, full: bool = False) -> str:
    """Check the dataset's files against its manifest; returns what was checked, in words.
    An error names the file and what differs."""
    folder = Path(folder)
    where = folder / "manifest.json"
    if "check" in manifest and seal(manifest)["check"] != manifest["check"]:
        raise DataFormatError(f"{where}: changed after the build (its check does not match "
                              "its content); rebuild the dataset")
    files = manifest.get("files")
    if not isinstance(files, dict):  # a manifest from before sampled hashes: the full check
        full, files = True, {}
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            raise DataFormatError(f"{path}: missing; the manifest lists it")
        size = path.stat().st_size
        if size != record.get("bytes"):
            raise DataFormatError(f"{path}: {size} bytes, the manifest says "
                                  f"{record.get('bytes')}; the file is damaged or replaced, "
                                  "rebuild the dataset")
        if not full and sampled_sha256(path) != record.get("sampled_sha256"):
            raise DataFormatError(f"{path}: its content differs from the build's (sampled "
                                  "hash); the file is damaged, rebuild the dataset")
    if full:
        from lmsuite.data.corpus import file_sha256

        for name, expected in manifest["sha256"].items():
            if file_sha256(folder / name) != expected:
                raise DataFormatError(f"{folder / name}: sha256 differs from the manifest's; "
                                      "the file is damaged, rebuild the dataset")
        return "every byte (sha256)"
    return f"sizes and sampled blocks of {len(files)} files"
