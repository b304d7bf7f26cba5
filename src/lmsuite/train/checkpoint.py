"""Checkpoints: an HF folder per step with trainer state beside it, written atomically; the lock."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import torch
from tokenizers import Tokenizer

from lmsuite.durable import (
    fsync_tree,
    is_temporary,
    put_back_moved_aside,
    rename_away,
    replace_folder,
    temporary,
)
from lmsuite.errors import DataFormatError, LmsuiteError, reason
from lmsuite.model.hf import read_weights, save_weights
from lmsuite.model.neox import NeoXConfig
from lmsuite.runs import checkpoint_dir, list_steps

# What stays beside the weights even when the trainer state is dropped: where they come from
# and how they were computed.
PROVENANCE = ("suite", "model", "dataset", "step", "tokens", "train_bin_sha256",
              "train_samples", "lmsuite_version", "trajectory", "compute", "branch", "layout",
              "precision")


def list_checkpoints(model_dir: Path, with_trainer_state: bool = False) -> list[int]:
    """Steps of the complete checkpoints in `model_dir` (`runs.list_steps`); with
    `with_trainer_state`, only those a run can resume from."""
    return [step for step in list_steps(model_dir) if not with_trainer_state
            or (checkpoint_dir(model_dir, step) / "trainer_state" / "state.json").is_file()]


def save_checkpoint(model_dir: Path, step: int, model_state: dict, cfg: NeoXConfig,
                    tokenizer: Tokenizer, optimizer_state: dict, state: dict) -> Path:
    """Write step<step>/ (HF folder + trainer_state/) under a temporary name, then rename it."""
    final = checkpoint_dir(model_dir, step)
    tmp = temporary(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_weights(model_state, cfg, tmp, tokenizer)
        provenance = {k: state[k] for k in PROVENANCE if k in state}
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        trainer = tmp / "trainer_state"
        trainer.mkdir()
        torch.save(optimizer_state, trainer / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        torch.save(rng, trainer / "rng.pt")
        (trainer / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        fsync_tree(tmp)  # whole on disk before the rename makes it visible
        # a step saved again (after a resume from an earlier one) replaces the old whole
        replace_folder(tmp, final)
    except BaseException:  # an error, Ctrl-C or SIGTERM: leave nothing half-written
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def drop_trainer_state(model_dir: Path, keep: int) -> None:
    """Delete the optimizer state of every checkpoint but step `keep` (weights stay). Each goes
    in one rename before it is deleted, so a kill midway leaves no half of one behind."""
    for step in list_checkpoints(model_dir):
        folder = checkpoint_dir(model_dir, step)
        if step != keep and (folder / "trainer_state").is_dir():
            rename_away(folder / "trainer_state", ".dropped")
        shutil.rmtree(folder / "trainer_state.dropped", ignore_errors=True)


def load_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """(model state, optimizer state, trainer state) of a checkpoint; tensors only, loaded
    with weights_only=True, so no pickled code ever runs. Restores the RNG states too."""
    trainer = path / "trainer_state"
    at = trainer / "state.json"
    try:
        state = json.loads(at.read_text())
        at = trainer / "optimizer.pt"
        optimizer = torch.load(at, map_location="cpu", weights_only=True)
        at = trainer / "rng.pt"
        rng = torch.load(at, map_location="cpu", weights_only=True)
    except (OSError, json.JSONDecodeError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise DataFormatError(f"{at}: unreadable trainer state ({reason(e)})") from None
    for what, value, keys in (("trainer_state/state.json", state, ("step",)),
                              ("trainer_state/rng.pt", rng, ("torch",)),
                              ("trainer_state/optimizer.pt", optimizer, ("state",
                                                                         "param_groups"))):
        missing = [k for k in keys if not isinstance(value, dict) or k not in value]
        if missing:
            raise DataFormatError(f"{path / what}: field {missing[0]!r} missing; the trainer "
                                  "state is damaged")
    model = read_weights(path)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))
    return model, optimizer, state


def remove_stale_temporaries(model_dir: Path) -> None:
    """Delete half-written checkpoints left by a killed run, and put back a checkpoint it had
    moved aside to save the same step again (`durable.replace_folder`)."""
    for tmp in model_dir.glob(".step*"):
        if is_temporary(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    put_back_moved_aside(model_dir)


class ModelLock:
    """One trainer per model folder: `.lock` holds host and pid; a stale lock (its process is
    gone) is taken over."""

    def __init__(self, model_dir: Path):
        self.path = model_dir / ".lock"
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def _holder_alive(self) -> tuple[bool, str]:
        try:
            holder = self.path.read_text().strip()
        except FileNotFoundError:
            return False, ""
        host, _, pid = holder.partition(" ")
        if host != socket.gethostname() or not pid.isdigit():
            return True, holder  # another machine's lock: cannot tell, so respect it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False, holder
        except PermissionError:
            pass
        return True, holder

    def __enter__(self) -> ModelLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                alive, holder = self._holder_alive()
                if alive:
                    raise LmsuiteError(f"{self.path.parent}: another trainer ({holder}) is "
                                       "training this model; if it no longer runs (a job "
                                       f"killed on another machine), delete {self.path}"
                                       ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            return self

    def __exit__(self, *exc) -> None:
        try:
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()
        except FileNotFoundError:
            pass
