import math

import pytest
import torch

from lmsuite.model.neox import GPTNeoX, NeoXConfig, count_parameters, padded_vocab


def test_vocab_is_padded_as_pythias():
    assert padded_vocab(50277, 128) == 50304
    assert padded_vocab(50277, 256) == 50432
    assert padded_vocab(50277, 512) == 50688
    assert padded_vocab(4096, 128) == 4096


@pytest.mark.parametrize("init, std, out_std", [
    ("small_init", math.sqrt(2 / (5 * 256)), 2 / (4 * math.sqrt(256))),
    ("normal", 0.02, 0.02 / math.sqrt(2 * 4)),
])
def test_init_draws_pythias_standard_deviations(init, std, out_std):
    model = GPTNeoX(NeoXConfig(vocab_size=2048, layers=4, d_model=256, heads=4, init=init))
    model.init_weights(seed=0)
    p = dict(model.named_parameters())
    for name in ("gpt_neox.embed_in.weight", "embed_out.weight",
                 "gpt_neox.layers.0.attention.query_key_value.weight",
                 "gpt_neox.layers.3.mlp.dense_h_to_4h.weight"):
        assert p[name].std().item() == pytest.approx(std, rel=0.03), name
    for name in ("gpt_neox.layers.1.attention.dense.weight",
                 "gpt_neox.layers.2.mlp.dense_4h_to_h.weight"):
        assert p[name].std().item() == pytest.approx(out_std, rel=0.03), name
    assert torch.all(p["gpt_neox.layers.0.input_layernorm.weight"] == 1)
    assert torch.all(p["gpt_neox.layers.0.mlp.dense_4h_to_h.bias"] == 0)


def test_init_is_a_function_of_the_seed():
    cfg = NeoXConfig(vocab_size=256, layers=2, d_model=32, heads=2)
    a, b, c = GPTNeoX(cfg), GPTNeoX(cfg), GPTNeoX(cfg)
    a.init_weights(5)
    b.init_weights(5)
    c.init_weights(6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embed_out.weight"], sc["embed_out.weight"])


def test_loss_is_the_mean_next_token_cross_entropy_and_ignores_minus_100():
    model = GPTNeoX(NeoXConfig(vocab_size=256, layers=1, d_model=32, heads=2))
    model.init_weights(0)
    tokens = torch.randint(0, 256, (2, 9))
    labels = tokens[:, 1:].clone()
    labels[0, :3] = -100
    logits, loss = model(tokens[:, :-1], labels=labels)
    logp = torch.log_softmax(logits, -1)
    kept = labels != -100
    expected = -logp[kept].gather(-1, labels[kept][:, None]).mean()
    torch.testing.assert_close(loss, expected)


def test_loss_keeps_a_float64_models_precision():
    """Half-precision logits are scored in fp32; float64 ones must not be cut down to it."""
    model = GPTNeoX(NeoXConfig(vocab_size=256, layers=1, d_model=32, heads=2)).double()
    model.init_weights(0)
    tokens = torch.randint(0, 256, (2, 9))
    logits, loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    assert loss.dtype == torch.float64
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
    loss.backward()
    assert model.embed_out.weight.grad.dtype == torch.float64


def test_parameter_count_without_embeddings_excludes_both_embedding_matrices():
    cfg = NeoXConfig(vocab_size=512, layers=2, d_model=64, heads=4)
    model = GPTNeoX(cfg)
    embeddings = model.gpt_neox.embed_in.weight.numel() + model.embed_out.weight.numel()
    assert count_parameters(cfg, embeddings=False) == sum(
        p.numel() for p in model.parameters()) - embeddings
    tied = NeoXConfig(vocab_size=512, layers=2, d_model=64, heads=4, tie_embeddings=True)
    assert count_parameters(tied) == sum(p.numel() for p in GPTNeoX(tied).parameters())
