import json

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from lmsuite import load_model, save_model
from lmsuite.errors import DataFormatError
from lmsuite.model.neox import GPTNeoX, KVCache, NeoXConfig, generate

# Small shapes that exercise the layout: 25% rotary, odd rotary widths (head 20 -> 5 dims),
# a vocabulary that is not a multiple of 128, sequential residual, tied embeddings, full rotary.
CONFIGS = [
    dict(vocab_size=1000, layers=2, d_model=64, heads=4),
    dict(vocab_size=515, layers=3, d_model=96, heads=4, rotary_base=500.0),
    dict(vocab_size=777, layers=2, d_model=80, heads=4, parallel_residual=False),
    dict(vocab_size=640, layers=1, d_model=48, heads=2, rotary_pct=1.0, tie_embeddings=True),
    dict(vocab_size=300, layers=2, d_model=72, heads=6, rotary_pct=0.5, layer_norm_eps=1e-6),
]
IDS = ["rotary25", "head24", "sequential-odd-rotary", "tied-full-rotary", "heads6"]


def hf_config(c: dict) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        vocab_size=c["vocab_size"], hidden_size=c["d_model"], num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"], intermediate_size=4 * c["d_model"],
        rotary_pct=c.get("rotary_pct", 0.25), rotary_emb_base=c.get("rotary_base", 10000.0),
        use_parallel_residual=c.get("parallel_residual", True),
        tie_word_embeddings=c.get("tie_embeddings", False),
        layer_norm_eps=c.get("layer_norm_eps", 1e-5), max_position_embeddings=64,
    )


def random_tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 17), generator=torch.Generator().manual_seed(seed))


def hf_loss(hf: GPTNeoXForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    return hf(input_ids=tokens, labels=tokens).loss


def saved_by_transformers(c: dict, folder):
    """A random transformers model of config `c`, saved to `folder`, and lmsuite's load of it."""
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(hf_config(c)).eval()
    hf.save_pretrained(folder)
    return hf, load_model(folder)


@pytest.mark.parametrize("c", CONFIGS, ids=IDS)
def test_transformers_model_loads_in_lmsuite_with_equal_logits(c, tmp_path):
    hf, ours = saved_by_transformers(c, tmp_path)
    tokens = random_tokens(c["vocab_size"])
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits
        logits, loss = ours(tokens[:, :-1], labels=tokens[:, 1:])
        got = ours(tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, hf_loss(hf, tokens).detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("c", CONFIGS, ids=IDS)
def test_decoding_through_the_key_value_cache_gives_transformers_logits(c, tmp_path):
    # A prompt, then one token, then a chunk of several after the cached ones: each pass
    # attends to everything cached, and together they give the logits of one whole pass.
    hf, ours = saved_by_transformers(c, tmp_path)
    tokens = random_tokens(c["vocab_size"], seed=3)
    cache = KVCache(ours.config.layers)
    with torch.no_grad():
        expected = hf(input_ids=tokens).logits
        got = torch.cat([ours(tokens[:, a:b], cache=cache)
                         for a, b in ((0, 8), (8, 9), (9, 13), (13, 17))], dim=1)
    assert cache.length == tokens.shape[1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("c", CONFIGS, ids=IDS)
def test_lmsuite_model_loads_in_transformers_with_equal_logits(c, tmp_path):
    ours = GPTNeoX(NeoXConfig(max_positions=64, **c)).eval()
    ours.init_weights(seed=1)
    save_model(ours, tmp_path)
    hf = GPTNeoXForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert hf.config.rope_parameters["partial_rotary_factor"] == c.get("rotary_pct", 0.25)
    tokens = random_tokens(c["vocab_size"], seed=1)
    with torch.no_grad():
        expected = ours(tokens)
        got = hf(input_ids=tokens).logits
        _, loss = ours(tokens[:, :-1], labels=tokens[:, 1:])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(hf_loss(hf, tokens), loss, atol=1e-6, rtol=1e-6)


def test_state_dicts_have_the_same_names_and_shapes_as_transformers():
    c = CONFIGS[0]
    hf = GPTNeoXForCausalLM(hf_config(c)).state_dict()
    # transformers >= 5 calls the output embedding lm_head in memory and maps Pythia's
    # embed_out to it when loading; on disk lmsuite writes embed_out, as Pythia's files do.
    hf = {("embed_out.weight" if k == "lm_head.weight" else k): v for k, v in hf.items()}
    ours = GPTNeoX(NeoXConfig(**c)).state_dict()
    def shapes(state):
        return {k: tuple(v.shape) for k, v in state.items()}

    assert shapes(ours) == shapes(hf)


def test_greedy_generate_matches_transformers_generate(tmp_path):
    c = CONFIGS[1]
    ours = GPTNeoX(NeoXConfig(max_positions=64, **c)).eval()
    ours.init_weights(seed=3)
    save_model(ours, tmp_path)
    hf = GPTNeoXForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    prompt = random_tokens(c["vocab_size"], seed=4)[:, :8]
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                           do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 12), expected)


def test_saved_config_keeps_both_rotary_spellings(tmp_path):
    ours = GPTNeoX(NeoXConfig(vocab_size=256, layers=1, d_model=32, heads=2, rotary_pct=0.5,
                              rotary_base=1234.0))
    save_model(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gpt_neox"
    assert (cfg["rotary_pct"], cfg["rotary_emb_base"]) == (0.5, 1234.0)
    assert cfg["rope_parameters"]["partial_rotary_factor"] == 0.5
    assert cfg["rope_parameters"]["rope_theta"] == 1234.0


def test_transformers4_style_config_without_rope_parameters_loads(tmp_path):
    ours = GPTNeoX(NeoXConfig(vocab_size=256, layers=1, d_model=32, heads=2, rotary_pct=0.5,
                              rotary_base=1234.0))
    save_model(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("rope_parameters", "rope_theta", "head_dim"):
        del cfg[key]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(tmp_path)
    assert (loaded.config.rotary_pct, loaded.config.rotary_base) == (0.5, 1234.0)


def test_pythia_style_folder_with_pytorch_model_bin_and_cache_layout_loads(tmp_path):
    torch.manual_seed(0)
    c = CONFIGS[0]
    hf = GPTNeoXForCausalLM(hf_config(c)).eval()
    snapshot = tmp_path / "models--EleutherAI--pythia-tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--EleutherAI--pythia-tiny" / "refs").mkdir()
    (tmp_path / "models--EleutherAI--pythia-tiny" / "refs" / "main").write_text("abc123")
    hf.config.save_pretrained(snapshot)
    state = {("embed_out.weight" if k == "lm_head.weight" else k): v
             for k, v in hf.state_dict().items()}
    # Old Pythia files carry the causal-mask buffers too.
    state["gpt_neox.layers.0.attention.bias"] = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    torch.save(state, snapshot / "pytorch_model.bin")
    ours = load_model(tmp_path / "models--EleutherAI--pythia-tiny")
    tokens = random_tokens(c["vocab_size"])
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(input_ids=tokens).logits, atol=1e-5, rtol=0)


def test_other_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(DataFormatError, match=r"model_type is 'llama'.*gpt_neox") as e:
        load_model(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_missing_folder_and_mismatched_weights_are_clear_errors(tmp_path):
    with pytest.raises(DataFormatError, match="model folder not found"):
        load_model(tmp_path / "nope")
    ours = GPTNeoX(NeoXConfig(vocab_size=256, layers=1, d_model=32, heads=2))
    save_model(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["vocab_size"] = 300
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataFormatError, match="has shape"):
        load_model(tmp_path)


@pytest.mark.parametrize("layout", ["model.safetensors", "pytorch_model.bin",
                                    "model.safetensors.index.json"])
def test_damaged_weight_files_are_clear_errors_naming_the_file(tmp_path, layout):
    # A copy cut short (a full disk, an interrupted transfer) in any of the layouts.
    ours = GPTNeoX(NeoXConfig(vocab_size=256, layers=1, d_model=32, heads=2))
    save_model(ours, tmp_path)
    weights = tmp_path / "model.safetensors"
    if layout == "pytorch_model.bin":
        torch.save(ours.state_dict(), tmp_path / layout)
        weights.unlink()
    elif layout == "model.safetensors.index.json":
        weights.rename(tmp_path / "model-00001-of-00001.safetensors")
        (tmp_path / layout).write_text('{"weight_map": ')
    damaged = tmp_path / layout
    damaged.write_bytes(damaged.read_bytes()[:40])
    with pytest.raises(DataFormatError, match=f"{layout}: (unreadable weights|expected a JSON)"):
        load_model(tmp_path)
