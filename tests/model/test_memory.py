"""`lmsuite model info --memory`: the arithmetic against hand computation for two sizes."""

import json

from lmsuite.cli import main
from lmsuite.config import load_suite
from lmsuite.model.memory import Layout, estimate, parse_bytes, smallest_fitting
from lmsuite.model.neox import config_for_size
from tests.test_cli import PYTHIA


def cfg_of(name):
    suite = load_suite(PYTHIA)
    return config_for_size(suite.model(name), suite.data.vocab_size, suite.data.seq_len)


def test_pythia_70m_by_hand():
    cfg = cfg_of("pythia-70m")  # 6 layers, d 512, vocab padded to 50,304; micro-batch 16
    params = 6 * (12 * 512**2 + 13 * 512) + 2 * 512 + 2 * 50304 * 512
    assert params == 70_426_624  # the published count
    ddp = estimate(cfg, Layout("DDP", 1), 16, 2048)
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (4 * params, 4 * params, 8 * params)
    logits = 2048 * 16 * 50304 * 6
    assert ddp.activations == 6 * 34 * 2048 * 16 * 512 + logits == 13_312_720_896
    tp2 = estimate(cfg, Layout("TP 2", 2, tp=2), 16, 2048)
    layers = params - 2 * 50304 * 512
    assert tp2.weights == 4 * (2 * 50304 * 512 + layers // 2) == 243_875_840
    assert tp2.activations == 6 * (10 + 12) * 2048 * 16 * 512 + logits


def test_pythia_410m_by_hand_and_the_smallest_layout():
    cfg = cfg_of("pythia-410m")  # 24 layers, d 1024, 16 heads
    params = 24 * (12 * 1024**2 + 13 * 1024) + 2 * 1024 + 2 * 50304 * 1024
    assert params == 405_334_016
    fsdp = estimate(cfg, Layout("FSDP x8", 8, fsdp=8), 16, 2048)
    assert fsdp.weights == 4 * params // 8 and fsdp.optimizer == 8 * params // 8
    activations = 24 * 34 * 2048 * 16 * 1024 + 2048 * 16 * 50304 * 6
    assert fsdp.activations == activations
    # 16 bytes a parameter + activations = 43.8e9 bytes: over 40 GiB on one GPU; TP 2 on two
    # holds the embeddings whole and half the layers: 4.07e9 + 27.6e9
    assert 16 * params + activations > 40 * 2**30
    best = smallest_fitting(cfg, parse_bytes("40GiB"), 16, 2048)
    assert (best.layout.name, best.layout.gpus) == ("TP 2", 2)
    assert best.total == 16 * (2 * 50304 * 1024 + (params - 2 * 50304 * 1024) // 2) + \
        24 * 22 * 2048 * 16 * 1024 + 2048 * 16 * 50304 * 6
    assert smallest_fitting(cfg, parse_bytes("80GiB"), 16, 2048).layout.name == "DDP"
    recomputed = estimate(cfg, Layout("DDP", 1), 16, 2048, recompute=True)
    assert recomputed.activations == (2 * 24 + 34) * 2048 * 16 * 1024 + 2048 * 16 * 50304 * 6


def test_the_command_prints_every_size_and_its_smallest_layout(capsys):
    main(["model", "info", str(PYTHIA), "--memory", "--gpu-memory", "80GiB", "--json"])
    rows = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert [r["name"] for r in rows][:2] == ["pythia-70m", "pythia-160m"]
    assert rows[0]["fits"]["layout"] == "DDP"
    # pythia-12b's activations at micro-batch 16 fit no GPU of 80 GiB; recomputed, 4 GPUs
    assert rows[-1]["name"] == "pythia-12b" and rows[-1]["fits"] is None
    main(["model", "info", str(PYTHIA), "--memory", "--gpu-memory", "80GiB", "--json",
          "--activation-checkpointing"])
    rows = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert rows[-1]["fits"]["layout"] == "TP 2 x FSDP 2" and rows[-1]["fits"]["gpus"] == 4
    assert parse_bytes("141GB") == 141 * 10**9 and parse_bytes("80") == 80 * 2**30
