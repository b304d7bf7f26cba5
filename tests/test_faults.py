"""Faults and bad input, as a hostile but realistic user makes them: each is one line naming the
file or field and what was expected, exit code 2, nothing written outside the run folder and
nothing left half-written. docs/faults.md lists these cases; a test checks that it names only
tests that exist here."""

import errno
import gzip
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lmsuite.cli import main
from lmsuite.config import save_suite
from lmsuite.runs import list_steps
from tests.conftest import run_dir_with_data, small_suite, training_suite

ROOT = Path(__file__).resolve().parents[1]


def cli(argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of `lmsuite argv` run in this process."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def refused(argv, capsys, *patterns) -> str:
    """The command exits 2 with one line that matches every pattern."""
    code, err = cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("lmsuite: error: "), err
    for pattern in patterns:
        assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "data", "results", "report", "a/b", "x\x00y",
                                  "step10", ""])
def test_a_model_name_that_is_not_a_folder_name_is_refused(tmp_path, capsys, name):
    suite = small_suite()
    config = tmp_path / "run" / "suite.toml"
    config.parent.mkdir()
    save_suite(suite, config)
    text = config.read_text().replace('name = "s1"', f"name = {json.dumps(name)}", 1)
    config.write_text(text)
    before = files_under(tmp_path)
    refused(["train", config, "--model", name or "s1", "--out", tmp_path / "run"], capsys,
            "name must be")
    assert files_under(tmp_path) == before


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("lr", "inf"), ("lr", "nan"),
                                          ("weight_decay", "inf"), ("adam_eps", "-inf")])
def test_a_float_that_is_not_finite_is_refused(tmp_path, capsys, field, value):
    config = tmp_path / "suite.toml"
    save_suite(small_suite(), config)
    text = config.read_text()
    text = re.sub(rf"(?m)^{field} = .*$", f"{field} = {value}", text, count=1)
    config.write_text(text)
    refused(["model", "info", config], capsys, f"{field} must be a finite number")


def test_a_model_too_big_for_memory_is_refused_before_allocation():
    from lmsuite.config import ModelConfig
    from lmsuite.errors import LmsuiteError
    from lmsuite.model.neox import config_for_size
    from lmsuite.train.trainer import check_memory

    size = ModelConfig(name="huge", layers=2, d_model=256, heads=4, lr=1e-3)
    cfg = config_for_size(size, 10_000_000, 32)
    with pytest.raises(LmsuiteError, match=r"need \d+\.\d GiB, the available memory"):
        check_memory(cfg, torch.device("cpu"))
    check_memory(config_for_size(size, 512, 32), torch.device("cpu"))  # a small one passes


def test_a_non_finite_loss_stops_training_and_no_checkpoint_holds_it(built_data, tmp_path,
                                                                     capsys):
    import dataclasses

    from lmsuite.model.hf import read_weights

    suite = training_suite(built_data, steps=40, checkpoint_every=5, grad_clip=0.0)
    suite = dataclasses.replace(suite, models=[dataclasses.replace(suite.models[0], lr=1e12)])
    config = tmp_path / "suite.toml"
    save_suite(suite, config)
    run = run_dir_with_data(built_data, tmp_path / "run")
    line = refused(["train", config, "--model", "s1", "--out", run, "--no-progress"], capsys,
                   r"step \d+ gave loss", "last good checkpoint is step")
    steps = list_steps(run / "s1")
    assert steps and f"step{steps[-1]}" in line
    for step in steps:
        assert all(torch.isfinite(t).all() for t in read_weights(run / "s1" / f"step{step}")
                   .values()), step


# --- damaged data -----------------------------------------------------------------------------


def _trainable(built_data, tmp_path):
    suite = training_suite(built_data, steps=10, checkpoint_every=5)
    config = tmp_path / "suite.toml"
    save_suite(suite, config)
    return config, run_dir_with_data(built_data, tmp_path / "run")


def _train(config, run):
    return ["train", config, "--model", "s1", "--out", run, "--no-progress"]


def test_bytes_flipped_inside_train_bin_are_found_before_training(built_data, tmp_path, capsys):
    config, run = _trainable(built_data, tmp_path)
    path = run / "data" / "standard" / "train.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    refused(_train(config, run), capsys, "train.bin: its content differs", "rebuild")
    assert not (run / "s1").exists() or not list_steps(run / "s1")
    refused(["data", "verify", run / "data" / "standard", "--full"], capsys, "sha256 differs")


def test_a_truncated_train_bin_is_found_by_its_size(built_data, tmp_path, capsys):
    config, run = _trainable(built_data, tmp_path)
    path = run / "data" / "standard" / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])
    refused(_train(config, run), capsys, r"train.bin: \d+ bytes, the manifest says")


def test_an_edited_manifest_is_found(built_data, tmp_path, capsys):
    config, run = _trainable(built_data, tmp_path)
    path = run / "data" / "standard" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sha256"]["train.bin"] = "0" * 64
    path.write_text(json.dumps(manifest))
    refused(_train(config, run), capsys, "manifest.json: changed after the build")


def test_a_token_id_past_the_vocabulary_stops_before_anything_is_written(built_data, tmp_path,
                                                                         capsys):
    from lmsuite.data.verify import describe_files, seal

    config, run = _trainable(built_data, tmp_path)
    folder = run / "data" / "standard"
    tokens = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r+")
    tokens[3] = 60000  # a dataset built with another tokenizer, its manifest consistent
    tokens.flush()
    del tokens
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = describe_files(folder)
    (folder / "manifest.json").write_text(json.dumps(seal(manifest)))
    refused(_train(config, run), capsys, "step 0 holds token id 60000", "vocabulary of 512")
    assert not (run / "s1").exists() or not list_steps(run / "s1")


def test_a_manifest_of_the_wrong_shape_names_the_field(built_data, tmp_path, capsys):
    config, run = _trainable(built_data, tmp_path)
    (run / "data" / "standard" / "manifest.json").write_text("{}")
    refused(_train(config, run), capsys, "manifest.json: field 'params' missing")
    refused(["batch", run / "data" / "standard", "--step", 0], capsys, "field 'params'")


# --- sources ----------------------------------------------------------------------------------


def _corpus_config(tmp_path, source, **data):
    suite = small_suite(source=[str(source)], documents=10, **data)
    config = tmp_path / "suite.toml"
    save_suite(suite, config)
    return config


def test_a_source_that_is_not_utf8_is_named_with_its_byte_and_nothing_is_left(tmp_path, capsys):
    source = tmp_path / "docs.txt"
    source.write_bytes(b"fine text " * 50 + b"\xff\xfe broken" + b" more" * 50)
    config = _corpus_config(tmp_path, source, txt_separator="\n\n")
    out = tmp_path / "run" / "data"
    refused(["data", "build", config, "--out", out, "--no-progress"], capsys,
            r"docs.txt: not valid utf-8 at byte 500", "encoding_errors")
    assert not out.exists() or files_under(out) <= {".build.lock"}  # the lock, released


def test_a_source_that_is_not_utf8_builds_when_the_config_says_replace(tmp_path, capsys):
    source = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document {i} " * 20}).encode() for i in range(40)]
    lines[5] = b'{"text": "bad \xff byte ' + b"x " * 40 + b'"}'
    source.write_bytes(b"\n".join(lines) + b"\n")
    refused(["data", "build", _corpus_config(tmp_path, source), "--out", tmp_path / "a",
             "--no-progress"], capsys, r"docs.jsonl:6: not valid utf-8")
    config = _corpus_config(tmp_path, source, encoding_errors="replace", vocab_size=300)
    code, err = cli(["data", "build", config, "--out", tmp_path / "b", "--no-progress"], capsys)
    assert code == 0, err


def test_a_truncated_gzip_source_is_named(tmp_path, capsys):
    source = tmp_path / "docs.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 30}).encode() + b"\n"
                                  for i in range(200)))
    source.write_bytes(data[: len(data) // 2])
    refused(["data", "build", _corpus_config(tmp_path, source), "--out", tmp_path / "run",
             "--no-progress"], capsys, "docs.jsonl.gz: the compressed file is damaged or cut "
             "short after line")


def test_a_truncated_zstd_source_is_named(tmp_path, capsys):
    import zstandard

    source = tmp_path / "docs.jsonl.zst"
    data = zstandard.ZstdCompressor().compress(b"".join(
        json.dumps({"text": f"doc {i} " * 30}).encode() + b"\n" for i in range(300)))
    source.write_bytes(data[: len(data) * 2 // 3])  # cut inside the frame
    refused(["data", "build", _corpus_config(tmp_path, source), "--out", tmp_path / "run",
             "--no-progress"], capsys, "docs.jsonl.zst: the compressed file is damaged or cut "
             "short")


def test_an_empty_txt_separator_is_refused(tmp_path, capsys):
    config = tmp_path / "suite.toml"
    save_suite(small_suite(), config)
    config.write_text(config.read_text().replace("[data]\n", '[data]\ntxt_separator = ""\n', 1))
    refused(["model", "info", config], capsys, "txt_separator must be a non-empty string")


def test_a_config_that_is_a_folder_or_not_utf8_is_one_line(tmp_path, capsys):
    refused(["model", "info", tmp_path], capsys, "is a folder, expected a suite TOML file")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'name = "\xff"\n')
    refused(["model", "info", bad], capsys, "bad.toml: not valid TOML")


# --- files that parse but are wrong -----------------------------------------------------------


def _checkpoint_copy(small_run, tmp_path) -> Path:
    _, run_dir = small_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture(scope="module")
def unfinished(built_data, tmp_path_factory):
    """(config, run folder) of s1 trained to step 20 of 30, to be resumed."""
    from lmsuite.train.trainer import train

    suite = training_suite(built_data, steps=30, checkpoint_every=10)
    folder = tmp_path_factory.mktemp("unfinished")
    run = run_dir_with_data(built_data, folder / "run")
    train(suite, "s1", "standard", run, progress=False)
    shutil.rmtree(run / "s1" / "step30")
    config = folder / "suite.toml"
    save_suite(suite, config)
    return config, run


def _resumable(unfinished, tmp_path) -> tuple[Path, Path]:
    config, run = unfinished
    shutil.copytree(run, tmp_path / "run")
    return config, tmp_path / "run"


@pytest.mark.parametrize("config, pattern", [
    ([1, 2], "expected a JSON object"),
    ({"model_type": "gpt_neox", "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 1,
      "num_attention_heads": 0, "intermediate_size": 128, "max_position_embeddings": 32,
      "rotary_pct": 1.0}, "heads must be positive"),
])
def test_a_config_json_of_the_wrong_shape_names_the_file(small_run, tmp_path, capsys, config,
                                                         pattern):
    run = _checkpoint_copy(small_run, tmp_path)
    (run / "s1" / "step20" / "config.json").write_text(json.dumps(config))
    refused(["eval", run / "s1", "--steps", "20", "--tasks", "perplexity", "--no-progress"],
            capsys, "config.json", pattern)


def test_trainer_state_with_missing_keys_is_one_line_on_resume(unfinished, tmp_path, capsys):
    config, run = _resumable(unfinished, tmp_path)
    state = run / "s1" / "step20" / "trainer_state" / "rng.pt"
    torch.save({"nothing": torch.zeros(1)}, state)
    refused(["train", config, "--model", "s1", "--out", run, "--resume", "--no-progress"],
            capsys, r"rng.pt: field 'torch' missing")


def test_a_refused_pickle_is_one_line(unfinished, tmp_path, capsys):
    config, run = _resumable(unfinished, tmp_path)
    torch.save({"state": {}, "param_groups": [], "code": math.sqrt},
               run / "s1" / "step20" / "trainer_state" / "optimizer.pt")
    refused(["train", config, "--model", "s1", "--out", run, "--resume", "--no-progress"],
            capsys, "optimizer.pt", r"refused \(weights_only=True\)")


def test_a_broken_line_of_the_evaluation_items_is_named(small_run, tmp_path, capsys):
    run = _checkpoint_copy(small_run, tmp_path)
    items = run / "data" / "standard" / "corpus.meta" / "eval" / "qa.jsonl"
    items.write_text(items.read_text().split("\n", 1)[0] + "\n{broken\n")
    refused(["eval", run / "s1", "--steps", "20", "--tasks", "facts", "--no-progress"], capsys,
            r"qa.jsonl:2")


def test_a_result_row_of_the_wrong_shape_is_named(small_run, tmp_path, capsys):
    run = _checkpoint_copy(small_run, tmp_path)
    (run / "results").mkdir(exist_ok=True)
    (run / "results" / "eval.jsonl").write_text('{"model": "s1", "step": 0}\n[1, 2]\n')
    refused(["report", run], capsys, r"eval.jsonl:1: a row needs .* field 'task' missing")


# --- the operating system ---------------------------------------------------------------------


def test_an_output_path_that_is_a_file_or_results_that_is_a_folder(small_run, tmp_path, capsys):
    config = tmp_path / "suite.toml"
    save_suite(small_suite(), config)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(["data", "build", config, "--out", blocker / "data", "--no-progress"], capsys,
            "file")
    run = _checkpoint_copy(small_run, tmp_path)
    refused(["eval", run / "s1", "--steps", "20", "--tasks", "perplexity", "--results",
             tmp_path, "--no-progress"], capsys, "is a folder")


def test_a_full_disk_is_one_line_that_says_what_is_safe(unfinished, tmp_path, capsys,
                                                        monkeypatch):
    import lmsuite.train.checkpoint as checkpoint

    config, run = _resumable(unfinished, tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "s1" / ".step30"))

    monkeypatch.setattr(checkpoint, "save_weights", full)
    refused(["train", config, "--model", "s1", "--out", run, "--resume", "--no-progress"],
            capsys, "no space left on the device", "previous checkpoint")
    assert list_steps(run / "s1")[-1] == 20

    def torch_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.undo()
    monkeypatch.setattr(torch, "save", torch_full)
    refused(["train", config, "--model", "s1", "--out", run, "--resume", "--no-progress"],
            capsys, "no space left on the device")


def test_every_case_in_docs_faults_has_its_test():
    text = (ROOT / "docs" / "faults.md").read_text()
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", text))
    here = {name for name in globals() if name.startswith("test_")}
    assert named and named <= here, named - here
    assert here - {"test_every_case_in_docs_faults_has_its_test"} <= named, here - named
