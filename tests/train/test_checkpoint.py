import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmsuite.data.tokenizer import train_tokenizer
from lmsuite.errors import DataFormatError, LmsuiteError
from lmsuite.model.neox import GPTNeoX, NeoXConfig
from lmsuite.train import checkpoint as ckpt
from tests.conftest import assert_on_disk_before_renamed, record_fsyncs_and_renames


@pytest.fixture
def parts():
    cfg = NeoXConfig(vocab_size=256, layers=1, d_model=16, heads=2)
    model = GPTNeoX(cfg)
    model.init_weights(0)
    opt = torch.optim.AdamW(model.parameters())
    tok = train_tokenizer(["a few words to learn from"] * 5, 260)
    return cfg, model, opt, tok


def save(tmp_path, parts, step):
    cfg, model, opt, tok = parts
    return ckpt.save_checkpoint(tmp_path, step, model.state_dict(), cfg, tok, opt.state_dict(),
                                {"step": step})


def test_checkpoint_round_trips_weights_optimizer_and_rng(tmp_path, parts):
    path = save(tmp_path, parts, 3)
    expected_rng = torch.get_rng_state()
    torch.rand(5)
    model_state, optimizer_state, state = ckpt.load_checkpoint(path)
    assert state == {"step": 3}
    assert torch.equal(torch.get_rng_state(), expected_rng)
    for k, v in parts[1].state_dict().items():
        assert torch.equal(model_state[k], v)
    assert optimizer_state["param_groups"][0]["betas"] == (0.9, 0.999)
    assert ckpt.list_checkpoints(tmp_path, with_trainer_state=True) == [3]


def test_a_checkpoint_is_on_disk_before_its_rename_makes_it_visible(tmp_path, parts,
                                                                    monkeypatch):
    # A machine that goes down right after the rename must not leave a complete-looking
    # checkpoint with empty files: every file and folder is flushed first, the rename after.
    events = record_fsyncs_and_renames(monkeypatch)
    assert_on_disk_before_renamed(events, save(tmp_path, parts, 5))


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt(), SystemExit(143)])
def test_a_failure_while_writing_leaves_no_checkpoint(tmp_path, parts, monkeypatch, error):
    save(tmp_path, parts, 1)
    real_save = ckpt.torch.save

    def fail(*args, **kwargs):
        real_save(*args, **kwargs)  # part of the checkpoint is written
        raise error

    monkeypatch.setattr(ckpt.torch, "save", fail)
    with pytest.raises(type(error)):
        save(tmp_path, parts, 2)
    assert ckpt.list_checkpoints(tmp_path) == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step1"]


def test_a_process_killed_while_writing_leaves_a_temporary_the_next_run_removes(tmp_path,
                                                                               parts):
    save(tmp_path, parts, 1)
    half = tmp_path / ".step2.tmp-999999"  # what SIGKILL leaves: nothing runs to remove it
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    assert ckpt.list_checkpoints(tmp_path) == [1]
    ckpt.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step1"]


def test_saving_a_step_again_keeps_the_old_checkpoint_whole_until_the_new_is_in_place(
        tmp_path, parts, monkeypatch):
    # A run resumed from an earlier checkpoint saves a step that exists again: a failure
    # at the last moment must leave the old checkpoint as it was, not half of it deleted.
    old_weights = (save(tmp_path, parts, 2) / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(parts[1].parameters()).add_(1.0)
    real_replace = os.replace

    def fail_on_the_new_one(src, dst):
        if Path(src).name.startswith(".step2.tmp-"):  # the new checkpoint's folder
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", fail_on_the_new_one)
    with pytest.raises(OSError, match="disk gone"):
        save(tmp_path, parts, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step2"]
    assert (tmp_path / "step2" / "model.safetensors").read_bytes() == old_weights
    assert ckpt.list_checkpoints(tmp_path, with_trainer_state=True) == [2]
    new_weights = (save(tmp_path, parts, 2) / "model.safetensors").read_bytes()
    assert new_weights != old_weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step2"]


def test_a_checkpoint_moved_aside_by_a_killed_run_is_put_back(tmp_path, parts):
    save(tmp_path, parts, 1)
    os.replace(tmp_path / "step1", tmp_path / ".step1.old-999999")  # killed before the new
    save(tmp_path, parts, 3)
    (tmp_path / ".step3.old-999998").mkdir()  # killed while deleting the old one
    ckpt.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step1", "step3"]
    assert ckpt.list_checkpoints(tmp_path, with_trainer_state=True) == [1, 3]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_trainer_state_is_loaded_with_weights_only(tmp_path, parts):
    path = save(tmp_path, parts, 1)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(path / "trainer_state" / "optimizer.pt", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(DataFormatError, match=r"optimizer.pt: unreadable trainer state \(holds "
                                              r"pickled objects other than tensors"):
        ckpt.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_drop_trainer_state_keeps_weights_everywhere(tmp_path, parts):
    for step in (0, 1, 2):
        save(tmp_path, parts, step)
    ckpt.drop_trainer_state(tmp_path, keep=2)
    assert ckpt.list_checkpoints(tmp_path) == [0, 1, 2]
    assert ckpt.list_checkpoints(tmp_path, with_trainer_state=True) == [2]


def test_a_drop_killed_midway_leaves_no_half_of_a_trainer_state(tmp_path, parts, monkeypatch):
    import shutil

    for step in (0, 1):
        save(tmp_path, parts, step)
    rmtree = shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        for part in sorted(Path(path).iterdir())[:1]:  # one file deleted, then the kill
            part.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.drop_trainer_state(tmp_path, keep=1)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert ckpt.list_checkpoints(tmp_path, with_trainer_state=True) == [1]
    ckpt.drop_trainer_state(tmp_path, keep=1)  # the next one clears what the kill left
    assert [p.name for p in ckpt.checkpoint_dir(tmp_path, 0).iterdir()
            if p.name.startswith("trainer_state")] == []


def test_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    with ckpt.ModelLock(tmp_path), pytest.raises(LmsuiteError, match="another trainer"):
        ckpt.ModelLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket

    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {dead}\n")
    with ckpt.ModelLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[1] == str(os.getpid())


def test_a_checkpoint_with_damaged_weights_is_a_clear_error(tmp_path, parts):
    path = save(tmp_path, parts, 1)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(DataFormatError, match="model.safetensors: unreadable weights"):
        ckpt.load_checkpoint(path)
