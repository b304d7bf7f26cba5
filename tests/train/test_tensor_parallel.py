"""Tensor parallelism on the CPU with gloo under torchrun: TP = 2 (2 processes) and DP = 2 x
TP = 2 (4 processes) against one process, checkpoints loaded by transformers, resumes."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPTNeoXForCausalLM

from lmsuite.config import save_suite
from lmsuite.data.order import batch_at
from lmsuite.errors import LmsuiteError
from lmsuite.model import load_model, read_model_config
from lmsuite.train.checkpoint import list_checkpoints
from lmsuite.train.tensor_parallel import check_divisible
from lmsuite.train.trainer import Trainer
from tests.conftest import assert_weights_close, run_dir_with_data, training_suite
from tests.train.test_distributed import torchrun


def weights(run_dir, step):
    return load_file(run_dir / "s1" / f"step{step}" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(built_data, tmp_path_factory):
    """s1 (1 layer, d_model 32, 2 heads) trained 10 steps by one process, and its suite file."""
    tmp = tmp_path_factory.mktemp("tp")
    suite = training_suite(built_data, steps=10, checkpoint_every=5)
    config = tmp / "suite.toml"
    save_suite(suite, config)
    single = run_dir_with_data(built_data, tmp / "single")
    Trainer(suite, "s1", "standard", single, progress=False).run()
    return config, single


@pytest.mark.parametrize("procs", [2, 4])  # TP 2, and DP 2 x TP 2
def test_tensor_parallel_trains_as_one_process_and_saves_whole_hf_folders(built_data, straight,
                                                                          tmp_path, procs):
    config, single = straight
    run = run_dir_with_data(built_data, tmp_path / "tp")
    torchrun(config, run, procs, "--tensor-parallel", "2")
    cfg = read_model_config(single / "s1" / "step10")
    assert list_checkpoints(run / "s1") == list_checkpoints(single / "s1")
    for step in (1, 5, 10):
        assert_weights_close(weights(single, step), weights(run, step), cfg)
    provenance = json.loads((run / "s1" / "step10" / "provenance.json").read_text())
    assert provenance["layout"] == {"data_parallel": procs // 2, "tensor_parallel": 2}
    assert provenance["compute"]["cpu_kernels"] == []  # the kernels step aside for shards
    # The saved folder is whole: transformers loads it, and its logits are lmsuite's.
    folder = run / "s1" / "step10"
    hf = GPTNeoXForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokens = torch.from_numpy(batch_at(run / "data" / "standard", 3)[:, :-1].astype("int64"))
    with torch.no_grad():
        theirs = hf(tokens).logits
        ours = load_model(folder).eval()(tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    rows = (run / "s1" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(10))


def test_a_tensor_parallel_resume_is_bitwise_and_another_layout_continues(built_data, straight,
                                                                         tmp_path):
    config, single = straight
    whole = run_dir_with_data(built_data, tmp_path / "whole")
    torchrun(config, whole, 2, "--tensor-parallel", "2")
    for layout, procs, flags in (("same", 2, ["--tensor-parallel", "2"]), ("one", 1, [])):
        resumed = run_dir_with_data(built_data, tmp_path / layout)
        shutil.copytree(whole / "s1", resumed / "s1")
        shutil.rmtree(resumed / "s1" / "step10")  # as if killed after step 8's checkpoint
        done = torchrun(config, resumed, procs, *flags, "--resume")
        if layout == "same":
            assert weights(resumed, 10).keys() == weights(whole, 10).keys()
            for name, tensor in weights(whole, 10).items():
                assert torch.equal(weights(resumed, 10)[name], tensor), name
            assert "tensor parallel" not in done.stderr
        else:
            assert "data parallel 1 x tensor parallel 2 -> 1 x 1" in done.stderr
            cfg = read_model_config(single / "s1" / "step10")
            assert_weights_close(weights(single, 10), weights(resumed, 10), cfg)


def test_heads_that_do_not_divide_are_refused():
    check_divisible(8, 2048, 4, "m")
    with pytest.raises(LmsuiteError, match="heads = 6 does not divide by tensor_parallel = 4"):
        check_divisible(6, 2048, 4, "m")
    with pytest.raises(LmsuiteError, match="d_ff = 130 does not divide"):
        check_divisible(4, 130, 4, "m")
