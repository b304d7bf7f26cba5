"""The GPU path's pieces that a CPU can prove: bf16 autocast (where the CPU has native bf16, or
made to believe so), activation checkpointing, the precision choice; the rest marked gpu."""

import json

import pytest
import torch

from lmsuite.model.neox import GPTNeoX, NeoXConfig
from lmsuite.train import precision
from lmsuite.train.trainer import Trainer
from tests.conftest import run_dir_with_data, training_suite


def small_model(seed=0):
    model = GPTNeoX(NeoXConfig(vocab_size=97, layers=2, d_model=32, heads=4, max_positions=64))
    model.init_weights(seed)
    return model


def gradients(model, tokens):
    model.zero_grad()
    _, loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_gives_the_same_gradients():
    tokens = torch.randint(0, 97, (3, 17), generator=torch.Generator().manual_seed(1))
    plain, recomputed = small_model(), small_model()
    recomputed.checkpoint_layers = True
    a, b = gradients(plain, tokens), gradients(recomputed, tokens)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_the_precision_follows_what_the_hardware_reports(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert precision.resolve("fp32", cpu) == ("fp32", None)
    assert precision.resolve("auto", cpu) == ("fp32", None)
    chosen, why = precision.resolve("bf16", cpu)
    assert chosen == "fp32" and "no native bf16" in why
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision.resolve("bf16", cpu) == ("bf16", None)
    monkeypatch.setattr(precision, "bf16_faster", lambda device: False)
    assert precision.resolve("auto", cpu) == ("fp32", None)
    monkeypatch.setattr(precision, "bf16_faster", lambda device: True)
    assert precision.resolve("auto", cpu) == ("bf16", None)


def test_bf16_autocast_trains_on_a_cpu_that_has_it_and_resumes_bitwise(built_data, tmp_path,
                                                                      monkeypatch):
    import shutil

    from safetensors.torch import load_file

    # This CPU may lack native bf16 (then bf16 products are slow, not wrong): told it has it,
    # the trainer takes the bf16 path, which is what runs where the CPU reports AVX512_BF16.
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    suite = training_suite(built_data, steps=8, checkpoint_every=4, precision="bf16")
    fp32 = training_suite(built_data, steps=8, checkpoint_every=4)
    straight = run_dir_with_data(built_data, tmp_path / "bf16")
    Trainer(suite, "s1", "standard", straight, progress=False).run()
    reference = run_dir_with_data(built_data, tmp_path / "fp32")
    Trainer(fp32, "s1", "standard", reference, progress=False).run()
    provenance = json.loads((straight / "s1" / "step8" / "provenance.json").read_text())
    assert provenance["precision"] == "bf16"
    a = load_file(straight / "s1" / "step8" / "model.safetensors")
    b = load_file(reference / "s1" / "step8" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in a.values())  # fp32 master weights
    assert any(not torch.equal(a[k], b[k]) for k in a)  # bf16 products changed the result
    losses = [json.loads(line)["loss"] for line in
              (straight / "s1" / "metrics.jsonl").read_text().splitlines()]
    reference_losses = [json.loads(line)["loss"] for line in
                        (reference / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] == pytest.approx(reference_losses[-1], rel=0.05)  # close, not equal
    resumed = run_dir_with_data(built_data, tmp_path / "resumed")
    shutil.copytree(straight / "s1", resumed / "s1")
    shutil.rmtree(resumed / "s1" / "step8")
    Trainer(suite, "s1", "standard", resumed, progress=False).run(resume=True)
    c = load_file(resumed / "s1" / "step8" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.gpu
def test_the_gpu_step_uses_bf16_flash_attention_and_fused_adamw():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = GPTNeoX(NeoXConfig(vocab_size=512, layers=2, d_model=128, heads=2,
                               max_positions=256)).cuda()
    model.init_weights(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    tokens = torch.randint(0, 512, (4, 129), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        logits, loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    cpu = GPTNeoX(model.config)
    cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    with torch.no_grad():
        close = cpu(tokens[:, :-1].cpu())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ours = model(tokens[:, :-1]).float().cpu()
    assert (ours - close).abs().max() < 0.1


@pytest.mark.gpu
def test_activation_checkpointing_on_the_gpu_gives_the_same_gradients():
    tokens = torch.randint(0, 97, (3, 17), device="cuda")
    plain, recomputed = small_model().cuda(), small_model().cuda()
    recomputed.checkpoint_layers = True
    a, b = gradients(plain, tokens), gradients(recomputed, tokens)
    for name in a:
        torch.testing.assert_close(a[name], b[name])
