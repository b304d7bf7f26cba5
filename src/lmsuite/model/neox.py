"""GPT-NeoX as Pythia uses it, in plain PyTorch, with Hugging Face's parameter names and layouts.

Read top-down: rotary embedding, attention, MLP, the layer, the config, the model. Optional
CPU kernels (`lmsuite.accel`) attach to a built model from outside this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmsuite.config import ModelConfig, check_shape

# --- rotary position embedding ------------------------------------------------------------


def rotary_tables(seq_len: int, rotary_dims: int, base: float, device=None, start: int = 0):
    """cos and sin for positions start .. start + seq_len - 1, of shape
    (seq, 2 * ceil(rotary_dims / 2)), as Hugging Face computes them."""
    # An odd rotary_dims still yields ceil(dims / 2) frequencies, each used twice: HF does the
    # same, so the rotated width is rounded up to even.
    exponents = torch.arange(0, rotary_dims, 2, device=device).float() / rotary_dims
    inv_freq = 1.0 / (base**exponents)
    positions = torch.arange(start, start + seq_len, device=device).float()
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x (batch, heads, seq, head_dim); pass the rest."""
    width = cos.shape[-1]
    rot, keep = x[..., :width], x[..., width:]
    half = width // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, keep), dim=-1)


# --- attention, MLP, block -------------------------------------------------------------------


class NeoXAttention(nn.Module):
    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.d_model // cfg.heads
        # Fused QKV, laid out per head as [q_h | k_h | v_h], as in GPT-NeoX and HF.
        self.query_key_value = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.attention_bias)
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.attention_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, kv: list | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        # (batch, heads, seq, 3 * head_dim); under tensor parallelism this process holds
        # heads / N of them (the fused layout keeps each head's q, k, v together), hence -1
        qkv = self.query_key_value(x).view(b, t, -1, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv is not None:  # incremental decoding: attend to the cached keys too
            if kv[0] is not None:
                k, v = torch.cat((kv[0], k), dim=2), torch.cat((kv[1], v), dim=2)
            kv[:] = [k, v]  # (batch, heads, past + seq, head_dim)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # y: (batch, heads, seq, head_dim)
        return self.dense(y.transpose(1, 2).reshape(b, t, -1))


class NeoXMLP(nn.Module):
    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.d_model, cfg.d_ff)
        self.dense_4h_to_h = nn.Linear(cfg.d_ff, cfg.d_model)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate=self.approximate))


class NeoXLayer(nn.Module):
    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.parallel_residual = cfg.parallel_residual
        self.input_layernorm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attention = NeoXAttention(cfg)
        self.mlp = NeoXMLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, kv: list | None = None) -> torch.Tensor:
        attn = self.attention(self.input_layernorm(x), cos, sin, mask, kv)
        if self.parallel_residual:  # x + attn(ln1(x)) + mlp(ln2(x)), as Pythia
            return x + attn + self.mlp(self.post_attention_layernorm(x))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))


# --- config and model --------------------------------------------------------------------


@dataclass
class NeoXConfig:
    """The architecture of one GPT-NeoX model (what an HF config.json describes)."""

    vocab_size: int
    """Rows of the embedding matrices (already padded)."""
    layers: int
    """Number of transformer layers."""
    d_model: int
    """Width of the residual stream."""
    heads: int
    """Attention heads; must divide d_model."""
    d_ff: int = 0
    """Width of the MLP; 0 means 4 * d_model."""
    max_positions: int = 2048
    """Context length the model was trained for (rotary needs no table, so this is metadata)."""
    rotary_pct: float = 0.25
    """Share of each head's dimensions that get rotary position embedding."""
    rotary_base: float = 10000.0
    """Base of the rotary frequencies."""
    parallel_residual: bool = True
    """Parallel attention + MLP residual (Pythia) or sequential."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    tie_embeddings: bool = False
    """Share the input and output embedding (Pythia unties them)."""
    attention_bias: bool = True
    """Biases on the QKV and output projections of attention."""
    activation: str = "gelu"
    """"gelu" (exact, Pythia) or "gelu_tanh"."""
    init: str = "small_init"
    """"small_init" (Pythia <= 2.8B) or "normal" (Pythia 6.9B and 12B)."""

    def __post_init__(self) -> None:
        check_shape(self.layers, self.d_model, self.heads, self.rotary_pct, self.init)
        for name in ("vocab_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_ff == 0:
            self.d_ff = 4 * self.d_model
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f'activation must be "gelu" or "gelu_tanh", got {self.activation!r}')

    @property
    def rotary_dims(self) -> int:
        return int((self.d_model // self.heads) * self.rotary_pct)


class KVCache:
    """Keys and values of the tokens seen so far, one [k, v] pair per layer."""

    def __init__(self, layers: int):
        self.layers: list[list] = [[None, None] for _ in range(layers)]

    @property
    def length(self) -> int:
        k = self.layers[0][0]
        return 0 if k is None else k.shape[2]


def attention_mask(padding: torch.Tensor, seq: int, start: int) -> torch.Tensor:
    """(batch, 1, seq, start + seq) True where a query may attend: earlier or same positions
    that are not padding. A padding query still sees itself, so no softmax row is empty."""
    total = start + seq
    query = torch.arange(start, total, device=padding.device)[:, None]
    key = torch.arange(total, device=padding.device)[None, :]
    allowed = (key <= query)[None] & ~padding[:, None, :]
    return (allowed | (key == query)[None])[:, None]


class NeoXModel(nn.Module):
    """The trunk, named as HF's `GPTNeoXModel` so that state dict keys match."""

    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.embed_in = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(NeoXLayer(cfg) for _ in range(cfg.layers))
        self.final_layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)


class GPTNeoX(nn.Module):
    """GPT-NeoX language model; `state_dict()` keys equal those of Pythia's checkpoints."""

    def __init__(self, cfg: NeoXConfig):
        super().__init__()
        self.config = cfg
        self.gpt_neox = NeoXModel(cfg)
        self.embed_out = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.embed_out.weight = self.gpt_neox.embed_in.weight
        self.checkpoint_layers = False
        """Recompute each layer's activations in the backward pass instead of keeping them
        (training only): less memory for about a third more compute."""

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                      padding: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk's output (batch, seq, d_model), after the final LayerNorm: what the output
        layer turns into logits, for callers that need logits at a few positions only."""
        cfg = self.config
        t = input_ids.shape[1]
        start = 0 if cache is None else cache.length
        x = self.gpt_neox.embed_in(input_ids)  # (batch, seq, d_model)
        cos, sin = rotary_tables(t, cfg.rotary_dims, cfg.rotary_base, x.device, start)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        mask = None
        if cache is not None or padding is not None:
            if padding is None:
                padding = torch.zeros(input_ids.shape[0], start + t, dtype=torch.bool,
                                      device=x.device)
            mask = attention_mask(padding, t, start)
        recompute = self.checkpoint_layers and self.training and torch.is_grad_enabled() and \
            cache is None
        for i, layer in enumerate(self.gpt_neox.layers):
            if recompute:
                x = checkpoint(layer, x, cos, sin, mask, None, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, None if cache is None else cache.layers[i])
        return self.gpt_neox.final_layer_norm(x)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                cache: KVCache | None = None, padding: torch.Tensor | None = None):
        """Logits (batch, seq, vocab); with `labels` (batch, seq), also the mean cross-entropy.

        `labels[:, t]` is the token that should follow `input_ids[:, t]` (already shifted, as
        a training sample's `[1:]`); positions labelled -100 are ignored.

        For incremental decoding, `cache` holds the keys and values of earlier calls, and
        `padding` (batch, past + seq) marks left-padding tokens that no position may attend to.
        """
        logits = self.embed_out(self.hidden_states(input_ids, cache, padding))
        if labels is None:
            return logits  # (batch, seq, vocab)
        # Half-precision logits are scored in fp32; float64 ones keep their precision.
        flat_logits = logits.flatten(0, 1)
        flat_logits = flat_logits.to(torch.promote_types(flat_logits.dtype, torch.float32))
        return logits, self.cross_entropy(flat_logits, labels.flatten())

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of logits (rows, vocab) against labels (rows,), -100 ignored."""
        return F.cross_entropy(logits, labels, ignore_index=-100)

    def init_weights(self, seed: int) -> None:
        """Pythia's initialization, drawn from a generator seeded with `seed`."""
        cfg = self.config
        g = torch.Generator().manual_seed(seed)
        if cfg.init == "small_init":
            std = math.sqrt(2.0 / (5.0 * cfg.d_model))
            out_std = 2.0 / (cfg.layers * math.sqrt(cfg.d_model))  # wang_init
        else:
            std = 0.02
            out_std = 0.02 / math.sqrt(2.0 * cfg.layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name.endswith("final_layer_norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                elif name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
                    p.copy_(torch.randn(p.shape, generator=g) * out_std)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)


def count_parameters(cfg: NeoXConfig, embeddings: bool = True) -> int:
    """Parameters of a model of this shape, computed without building it (12B fits nowhere)."""
    d, f = cfg.d_model, cfg.d_ff
    bias = 1 if cfg.attention_bias else 0
    attention = 3 * d * d + 3 * d * bias + d * d + d * bias
    mlp = d * f + f + f * d + d
    norms = 4 * d
    total = cfg.layers * (attention + mlp + norms) + 2 * d
    if embeddings:
        total += cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return total


@torch.inference_mode()
def generate(model: GPTNeoX, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding: input_ids (batch, seq) -> (batch, seq + max_new_tokens)."""
    out = input_ids
    for _ in range(max_new_tokens):
        next_token = model(out)[:, -1].argmax(dim=-1, keepdim=True)
        out = torch.cat((out, next_token), dim=1)
    return out


def padded_vocab(vocab_size: int, multiple: int) -> int:
    """Round vocab_size up to a multiple of `multiple` (Pythia: 50277 -> 50304)."""
    return -(-vocab_size // multiple) * multiple


def config_for_size(size: ModelConfig, vocab_size: int, seq_len: int) -> NeoXConfig:
    """The architecture of suite size `size` for a tokenizer of `vocab_size` tokens."""
    return NeoXConfig(
        vocab_size=padded_vocab(vocab_size, size.vocab_multiple),
        layers=size.layers,
        d_model=size.d_model,
        heads=size.heads,
        max_positions=seq_len,
        rotary_pct=size.rotary_pct,
        rotary_base=size.rotary_base,
        parallel_residual=size.parallel_residual,
        init=size.init,
    )
