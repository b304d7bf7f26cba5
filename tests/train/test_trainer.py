import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import GPTNeoXForCausalLM

from lmsuite import load_model
from lmsuite.config import save_suite
from lmsuite.data.order import batch_at
from lmsuite.errors import LmsuiteError
from lmsuite.model import read_model_config
from lmsuite.model.neox import config_for_size
from lmsuite.train.checkpoint import ModelLock, list_checkpoints
from lmsuite.train.suite import train_suite
from lmsuite.train.trainer import check_batch_split, check_data, train
from tests.conftest import (
    assert_weights_close,
    recording_batches,
    run_dir_with_data,
    training_suite,
)


def recorded_training(suite, run_dir, model="s1"):
    """Train and return {step: rows fed to the model}."""
    with recording_batches() as seen:
        train(suite, model, "standard", run_dir, progress=False)
    return seen


@pytest.fixture(scope="module")
def trained(built_data, tmp_path_factory):
    suite = training_suite(built_data)
    run_dir = run_dir_with_data(built_data, tmp_path_factory.mktemp("run"))
    train(suite, "s2", "deduped", run_dir, progress=False)
    return suite, run_dir


def test_checkpoints_follow_pythias_schedule_and_metrics_log_every_step(trained):
    suite, run_dir = trained
    folder = run_dir / "s2-deduped"
    assert list_checkpoints(folder) == [0, 1, 2, 4, 8, 10, 16, 20, 30, 32, 40]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(40))
    assert set(rows[0]) == {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s",
                            "elapsed_s"}
    assert rows[-1]["tokens"] == 40 * 8 * 32
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5  # it learns
    assert not (folder / ".lock").exists()


def test_every_checkpoint_loads_in_transformers_with_lmsuites_logits(trained):
    _, run_dir = trained
    tokens = torch.from_numpy(batch_at(run_dir / "data" / "deduped", 3)[:2].astype(np.int64))
    for step in list_checkpoints(run_dir / "s2-deduped"):
        folder = run_dir / "s2-deduped" / f"step{step}"
        hf = GPTNeoXForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(input_ids=tokens).logits, load_model(folder)(tokens),
                                       atol=1e-5, rtol=0)


def test_step_s_trains_on_batch_at_s_whatever_the_micro_batch_size(built_data, tmp_path):
    whole = training_suite(built_data, steps=12, micro_batch_size=8)
    quarters = training_suite(built_data, steps=12, micro_batch_size=2)
    seen_whole = recorded_training(whole, run_dir_with_data(built_data, tmp_path / "a"))
    seen_quarters = recorded_training(quarters, run_dir_with_data(built_data, tmp_path / "b"))
    data = tmp_path / "a" / "data" / "standard"
    for step in range(12):
        assert seen_whole[step] == seen_quarters[step] == batch_at(data, step).tolist()
    a = load_file(tmp_path / "a" / "s1" / "step12" / "model.safetensors")
    b = load_file(tmp_path / "b" / "s1" / "step12" / "model.safetensors")
    assert_weights_close(a, b, read_model_config(tmp_path / "a" / "s1" / "step12"))


def cli(config, run_dir, *extra):
    return [sys.executable, "-m", "lmsuite", "train", str(config), "--model", "s2",
            "--out", str(run_dir), "--no-progress", *extra]


def metric_rows(run_dir):
    path = run_dir / "s2" / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_resume_after_kill_is_bitwise_identical(built_data, tmp_path):
    suite = training_suite(built_data, steps=120, checkpoint_every=25)
    config = tmp_path / "suite.toml"
    save_suite(suite, config)
    straight = run_dir_with_data(built_data, tmp_path / "straight")
    subprocess.run(cli(config, straight), check=True)
    killed = run_dir_with_data(built_data, tmp_path / "killed")
    # Killed between checkpoints (32 and 50; 75 and 100), and terminated as a scheduler does,
    # which releases the lock and leaves no temporary folder.
    for kill_after, sig in ((37, signal.SIGKILL), (90, signal.SIGTERM)):
        proc = subprocess.Popen(cli(config, killed, "--resume"), stderr=subprocess.PIPE,
                                text=True)
        while metric_rows(killed) < kill_after and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate()
        assert suite.train.steps not in list_checkpoints(killed / "s2")
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM and "--resume continues" in err
            assert sorted(p.name for p in (killed / "s2").iterdir()
                          if not p.name.startswith("step")) == ["metrics.jsonl"]
    subprocess.run(cli(config, killed, "--resume"), check=True)
    steps = list_checkpoints(straight / "s2")
    assert list_checkpoints(killed / "s2") == steps
    for step in steps:
        a = (straight / "s2" / f"step{step}" / "model.safetensors").read_bytes()
        b = (killed / "s2" / f"step{step}" / "model.safetensors").read_bytes()
        assert a == b, f"step {step} differs"
    rows = [json.loads(line) for line in (killed / "s2" / "metrics.jsonl").read_text().split("\n")
            if line]
    assert [r["step"] for r in rows] == list(range(120))
    straight_rows = [json.loads(line) for line in
                     (straight / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]
    done = subprocess.run(cli(config, killed, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0 and "finished already" in done.stdout + done.stderr


def test_training_leaves_pytorchs_deterministic_setting_as_it_found_it(trained):
    # The module fixture trained in this process; a finished run given --resume returns early.
    suite, run_dir = trained
    assert not torch.are_deterministic_algorithms_enabled()
    train(suite, "s2", "deduped", run_dir, resume=True, progress=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_provenance_records_the_kernels_and_matrix_products_that_computed_it(trained):
    from lmsuite import accel, speedups
    from lmsuite.model.neox import GPTNeoX

    suite, run_dir = trained
    record = json.loads((run_dir / "s2-deduped" / "step40" / "provenance.json").read_text())
    cfg = config_for_size(suite.model("s2"), suite.data.vocab_size, suite.data.seq_len)
    assert record["compute"] == speedups.compute_path(accel.install(GPTNeoX(cfg)))
    assert record["compute"]["blas"] == accel.blas_path()


def test_a_resume_on_another_compute_path_says_so_in_one_line(trained, tmp_path, capsys):
    import shutil

    suite, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for step in (32, 40):
        shutil.rmtree(copy / "s2-deduped" / f"step{step}")
    state_file = copy / "s2-deduped" / "step30" / "trainer_state" / "state.json"
    state = json.loads(state_file.read_text())
    state["compute"] = {"cpu_kernels": [], "blas": "off"}
    state_file.write_text(json.dumps(state))
    train(suite, "s2", "deduped", copy, resume=True, progress=False)
    said = [line for line in capsys.readouterr().err.splitlines() if "computed with" in line]
    assert len(said) == 1
    assert "CPU kernels none and off matrix products" in said[0]
    assert "not byte-identical" in said[0]


def test_existing_run_without_resume_and_held_lock_are_refused(trained):
    suite, run_dir = trained
    with pytest.raises(LmsuiteError, match="pass --resume"):
        train(suite, "s2", "deduped", run_dir, progress=False)
    with ModelLock(run_dir / "s2-deduped"), pytest.raises(LmsuiteError, match="another trainer"):
        train(suite, "s2", "deduped", run_dir, resume=True, progress=False)


def test_resume_under_other_settings_or_data_is_refused(trained, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    suite, run_dir = trained
    state_file = run_dir / "s2-deduped" / "step40" / "trainer_state" / "state.json"
    provenance = json.loads((state_file.parent.parent / "provenance.json").read_text())
    assert provenance["trajectory"]["model.lr"] == suite.model("s2").lr
    other_lr = dataclasses.replace(suite, models=[
        dataclasses.replace(m, lr=m.lr / 2) if m.name == "s2" else m for m in suite.models])
    with pytest.raises(LmsuiteError, match=r"step40.provenance.json: step 40 was trained with "
                                           r"model.lr = 0.002; the config now has model.lr"):
        train(other_lr, "s2", "deduped", run_dir, resume=True, progress=False)
    longer = dataclasses.replace(suite, train=dataclasses.replace(suite.train, steps=800))
    with pytest.raises(LmsuiteError, match="train.steps = 40; the config now has train.steps = 8"):
        train(longer, "s2", "deduped", run_dir, resume=True, progress=False)
    # What does not change the run is allowed: a finished run resumes as a no-op.
    other_micro = dataclasses.replace(suite, train=dataclasses.replace(
        suite.train, micro_batch_size=4, checkpoint_every=20))
    train(other_micro, "s2", "deduped", run_dir, resume=True, progress=False)
    # Other data under the same settings.
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    state_file = copy / "s2-deduped" / "step40" / "trainer_state" / "state.json"
    state = json.loads(state_file.read_text())
    state["train_bin_sha256"] = "0" * 64
    state_file.write_text(json.dumps(state))
    with pytest.raises(LmsuiteError, match="trained on a train.bin with sha256 0000"):
        train(suite, "s2", "deduped", copy, resume=True, progress=False)
    # Data rebuilt longer under the same settings begins with the same samples: allowed. So is
    # a setting the checkpoint does not know (a field a later lmsuite version added).
    state["train_samples"] += 8
    state["trajectory"].pop("train.adam_eps")
    state_file.write_text(json.dumps(state))
    train(suite, "s2", "deduped", copy, resume=True, progress=False)
    # A damaged record is one clear error, not a traceback.
    (copy / "s2-deduped" / "step40" / "provenance.json").write_text('{"model": ')
    with pytest.raises(LmsuiteError, match="step40/provenance.json: not valid JSON"):
        train(suite, "s2", "deduped", copy, resume=True, progress=False)


@pytest.mark.parametrize("command", [["train", "--model", "s2", "--dataset", "deduped",
                                      "--resume"], ["suite"]])
def test_the_command_refuses_changed_settings_before_it_builds_data(trained, tmp_path,
                                                                   monkeypatch, capsys, command):
    # (Re)building the data at scale takes hours: changed settings are refused first.
    import dataclasses

    from lmsuite.cli import main
    from lmsuite.data import build

    suite, run_dir = trained
    monkeypatch.setattr(build, "build_data", lambda *a, **k: pytest.fail("data built"))
    other_lr = dataclasses.replace(suite, models=[
        dataclasses.replace(m, lr=m.lr / 2) if m.name == "s2" else m for m in suite.models])
    save_suite(other_lr, tmp_path / "suite.toml")
    with pytest.raises(SystemExit):
        main([command[0], str(tmp_path / "suite.toml"), "--out", str(run_dir), *command[1:]])
    assert "was trained with model.lr = 0.002; the config now has model.lr" in \
        capsys.readouterr().err


def test_suite_trains_every_model_skips_finished_ones_and_resumes_the_rest(built_data,
                                                                          tmp_path, capsys):
    import dataclasses
    import shutil

    suite = training_suite(built_data, steps=6, checkpoint_every=3)
    run_dir = run_dir_with_data(built_data, tmp_path)
    folders = train_suite(suite, run_dir, progress=False)
    names = ["s1", "s1-deduped", "s2", "s2-deduped"]
    assert [f.name for f in folders] == names
    for name in names:
        assert list_checkpoints(run_dir / name) == [0, 1, 2, 3, 4, 6]
    weights = (run_dir / "s2" / "step6" / "model.safetensors").read_bytes()
    shutil.rmtree(run_dir / "s2" / "step6")  # s2 unfinished: resumes from step 4
    capsys.readouterr()
    assert [f.name for f in train_suite(suite, run_dir, progress=True)] == ["s2"]
    said = [line for line in capsys.readouterr().err.splitlines() if "lmsuite suite" in line]
    assert said == ["lmsuite suite: s2, model 3 of 4 (3 finished; 0m00s so far)"]
    assert (run_dir / "s2" / "step6" / "model.safetensors").read_bytes() == weights
    assert train_suite(suite, run_dir, progress=False) == []  # all finished: nothing to do
    # A model trained under other settings, finished or not, stops the suite before any
    # training.
    shutil.rmtree(run_dir / "s2-deduped" / "step6")
    other_lr = dataclasses.replace(suite, models=[
        dataclasses.replace(m, lr=m.lr * 2) if m.name == "s1" else m for m in suite.models])
    with pytest.raises(LmsuiteError, match=r"s1/step6/provenance.json: step 6 was trained with "
                                           r"model.lr = 0.003; the config now has model.lr = "
                                           r"0.006. The run folder's models"):
        train_suite(other_lr, run_dir, progress=False)
    assert 6 not in list_checkpoints(run_dir / "s2-deduped")
    shutil.rmtree(run_dir / "s1" / "step6")  # s1 unfinished, as the config says
    shutil.rmtree(run_dir / "s2" / "step6")  # s2 unfinished, under another lr
    other_lr = dataclasses.replace(suite, models=[
        dataclasses.replace(m, lr=m.lr * 2) if m.name == "s2" else m for m in suite.models])
    with pytest.raises(LmsuiteError, match=r"s2/step4/provenance.json: step 4 was trained with "
                                           r"model.lr = 0.002"):
        train_suite(other_lr, run_dir, progress=False)
    assert 6 not in list_checkpoints(run_dir / "s1")
    # So does data built under other settings, even when every model is finished.
    assert len(train_suite(suite, run_dir, progress=False)) == 3
    other_data = dataclasses.replace(suite, data=dataclasses.replace(
        suite.data, validation_fraction=0.1))
    with pytest.raises(LmsuiteError, match=r"built with data.validation_fraction = 0.05; the "
                                           r"config now has data.validation_fraction = 0.1"):
        train_suite(other_data, run_dir, progress=False)


def test_a_batch_that_does_not_split_evenly_over_processes_is_a_clear_error():
    # Uneven shares would drop rows of batch_at(s); uneven micro-batches would weight rows
    # unequally in the mean.
    check_batch_split(16, 16, 2)  # one micro-batch of 8 rows per process
    check_batch_split(16, 4, 2)  # two of 4
    with pytest.raises(LmsuiteError, match="batch_size 16 does not split evenly over 3"):
        check_batch_split(16, 16, 3)
    with pytest.raises(LmsuiteError, match=r"micro_batch_size 3 does not divide each process's "
                                           r"8 rows of a batch \(16 over 2 processes\)"):
        check_batch_split(16, 3, 2)


def test_fsdp_without_torchrun_is_a_clear_error_before_anything_is_written(built_data, tmp_path):
    suite = training_suite(built_data)
    with pytest.raises(LmsuiteError, match="--fsdp shards the model over processes: run it "
                                           "under torchrun"):
        train(suite, "s1", "standard", tmp_path / "run", fsdp=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_without_keep_trainer_state_only_the_newest_checkpoint_can_resume(built_data, tmp_path):
    suite = training_suite(built_data, steps=6, checkpoint_every=3, keep_trainer_state=False)
    run_dir = run_dir_with_data(built_data, tmp_path)
    folder = train(suite, "s1", "standard", run_dir, progress=False)
    assert list_checkpoints(folder) == [0, 1, 2, 3, 4, 6]
    assert list_checkpoints(folder, with_trainer_state=True) == [6]
    train(suite, "s1", "standard", run_dir, resume=True, progress=False)  # finished: no-op


def test_bf16_on_a_cpu_without_it_says_it_trains_in_fp32(built_data, tmp_path, capsys,
                                                        monkeypatch):
    import dataclasses

    from lmsuite.train import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU
    suite = training_suite(built_data, steps=1)
    bf16 = dataclasses.replace(suite, train=dataclasses.replace(suite.train, precision="bf16"))
    folder = train(bf16, "s1", "standard", run_dir_with_data(built_data, tmp_path),
                   progress=False)
    assert 'precision = "bf16" asked, but this CPU has no native bf16 (no AVX512_BF16 or AMX): ' \
        "it trains in fp32" in capsys.readouterr().err
    assert load_model(folder / "step1").embed_out.weight.dtype == torch.float32


def test_data_that_does_not_fit_the_model_is_a_clear_error(built_data):
    import dataclasses

    suite, data = built_data
    size = suite.models[0]
    small_vocab = config_for_size(dataclasses.replace(size, vocab_multiple=1), 300, 32)
    with pytest.raises(LmsuiteError, match=r"vocabulary \(512 tokens\) exceeds the model's"):
        check_data(data / "standard", suite, small_vocab)
    other_len = dataclasses.replace(suite, data=dataclasses.replace(suite.data, seq_len=64))
    cfg = config_for_size(size, 512, 64)
    with pytest.raises(LmsuiteError, match="seq_len 32 .* the config asks for seq_len 64"):
        check_data(data / "standard", other_len, cfg)


def test_the_train_command_builds_missing_data_first_without_progress_if_told(built_data,
                                                                             tmp_path, capsys):
    from lmsuite.cli import main

    save_suite(training_suite(built_data, steps=1), tmp_path / "suite.toml")
    main(["train", str(tmp_path / "suite.toml"), "--model", "s1", "--out",
          str(tmp_path / "run"), "--no-progress"])
    assert (tmp_path / "run" / "data" / "standard" / "manifest.json").is_file()
    assert list_checkpoints(tmp_path / "run" / "s1") == [0, 1]
    assert "tokenize + dedup" not in capsys.readouterr().err


def test_the_trainer_itself_builds_no_data(built_data, tmp_path):
    suite = training_suite(built_data, steps=1)
    with pytest.raises(LmsuiteError, match="no built dataset"):
        train(suite, "s1", "standard", tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "data").exists()
