"""Read and write Hugging Face GPT-NeoX model folders (config.json + safetensors)."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from lmsuite.data.tokenizer import load_tokenizer, save_tokenizer
from lmsuite.durable import write_file
from lmsuite.errors import DataFormatError, reason
from lmsuite.model.neox import GPTNeoX, NeoXConfig

# Buffers that older transformers releases saved beside the weights; they hold no parameters.
_LEGACY_BUFFERS = ("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq",
                   "rotary_emb.inv_freq")


def hf_config(cfg: NeoXConfig) -> dict:
    """config.json for `cfg`, read correctly by transformers 4.40+ and 5.x."""
    head_dim = cfg.d_model // cfg.heads
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": "gelu" if cfg.activation == "gelu" else "gelu_pytorch_tanh",
        "max_position_embeddings": cfg.max_positions,
        # transformers 4.x reads rotary_pct / rotary_emb_base; 5.x reads rope_parameters.
        "rotary_pct": cfg.rotary_pct,
        "rotary_emb_base": cfg.rotary_base,
        "rope_theta": cfg.rotary_base,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": cfg.rotary_base,
            "partial_rotary_factor": cfg.rotary_pct,
        },
        "head_dim": head_dim,
        "layer_norm_eps": cfg.layer_norm_eps,
        "use_parallel_residual": cfg.parallel_residual,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.attention_bias,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "use_cache": True,
        "torch_dtype": "float32",
        "lmsuite_init": cfg.init,
    }


def save_model(model: GPTNeoX, folder: str | os.PathLike,
               tokenizer: Tokenizer | str | os.PathLike | None = None) -> None:
    """Write `model` (and `tokenizer`) as an HF GPT-NeoX folder that transformers loads as is.

    `tokenizer` is a `tokenizers.Tokenizer`, or the path of a tokenizer.json or its folder.
    """
    save_weights(model.state_dict(), model.config, folder, tokenizer)


def save_weights(state: dict[str, torch.Tensor], cfg: NeoXConfig, folder: str | os.PathLike,
                 tokenizer: Tokenizer | str | os.PathLike | None = None) -> None:
    """`save_model` for a state dict already gathered (e.g. from a sharded model)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if cfg.tie_embeddings:
        state.pop("embed_out.weight", None)
    write_file(folder / "model.safetensors",
               lambda path: save_file(state, str(path), metadata={"format": "pt"}))
    write_file(folder / "config.json", hf_config(cfg))
    if tokenizer is not None:
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = load_tokenizer(tokenizer)
        save_tokenizer(tokenizer, folder, max_length=cfg.max_positions)


def resolve_model_folder(folder: str | os.PathLike) -> Path:
    """The folder itself, or for an HF cache repo folder (models--org--name) its main snapshot."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: model folder not found")
    snapshots = folder / "snapshots"
    if not (folder / "config.json").exists() and snapshots.is_dir():
        ref = folder / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
            return snapshots / ref.read_text().strip()
        found = sorted(p for p in snapshots.iterdir() if (p / "config.json").exists())
        if len(found) == 1:
            return found[0]
        raise DataFormatError(f"{folder}: an HF cache folder with {len(found)} snapshots and no "
                              "refs/main; pass the snapshot folder itself")
    return folder


def _rope(hf: dict) -> tuple[float, float]:
    """(rotary_pct, rotary_base) from either transformers 4.x or 5.x keys."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"rope type {kind!r} is not supported (only the default rotary)")
    pct = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct")))
    base = rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base")))
    return (0.25 if pct is None else float(pct)), (10000.0 if base is None else float(base))


def neox_config_from_hf(hf: dict) -> NeoXConfig:
    """Our NeoXConfig from an HF GPT-NeoX config.json dict."""
    act = hf.get("hidden_act", "gelu")
    activations = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                   "gelu_fast": "gelu_tanh"}
    if act not in activations:
        raise ValueError(f"hidden_act {act!r} is not supported; expected {list(activations)}")
    d_model, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if heads <= 0:
        raise ValueError(f"num_attention_heads: heads must be positive, got {heads}")
    if hf.get("head_dim") not in (None, d_model // heads):
        raise ValueError(f"head_dim {hf['head_dim']} differs from hidden_size / heads")
    pct, base = _rope(hf)
    return NeoXConfig(
        vocab_size=int(hf["vocab_size"]),
        layers=int(hf["num_hidden_layers"]),
        d_model=d_model,
        heads=heads,
        d_ff=int(hf.get("intermediate_size") or 4 * d_model),
        max_positions=int(hf.get("max_position_embeddings", 2048)),
        rotary_pct=pct,
        rotary_base=base,
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", True)),
        activation=activations[act],
        init=hf.get("lmsuite_init", "small_init"),
    )


def read_model_config(folder: str | os.PathLike) -> NeoXConfig:
    """The architecture of the HF GPT-NeoX folder; a clear error for any other model type."""
    folder = resolve_model_folder(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise DataFormatError(f"{folder}: no config.json; not a Hugging Face model folder")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise DataFormatError(f"{path}: expected a JSON object (a model's config), got "
                              f"{type(hf).__name__}")
    if hf.get("model_type") != "gpt_neox":
        raise DataFormatError(f"{folder}: model_type is {hf.get('model_type')!r}; lmsuite loads "
                              "only GPT-NeoX ('gpt_neox') models")
    try:
        return neox_config_from_hf(hf)
    except (KeyError, ValueError, TypeError) as e:
        raise DataFormatError(f"{path}: unusable GPT-NeoX config ({e})") from None


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of an HF folder in any of its layouts, as saved (no renaming); a clear error
    naming the file for a damaged one."""
    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    legacy = folder / "pytorch_model.bin"
    if single.is_file():
        return _load_weight_file(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise DataFormatError(f"{index}: expected a JSON object with a weight_map of "
                                  "tensor names to shard files") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_weight_file(folder / shard))
        return state
    if legacy.is_file():
        return _load_weight_file(legacy)
    raise DataFormatError(f"{folder}: no model.safetensors (or pytorch_model.bin) found")


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".bin":
            # Older Pythia revisions ship only this; weights_only never runs pickled code.
            return torch.load(path, map_location="cpu", weights_only=True)
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise DataFormatError(f"{path}: unreadable weights ({reason(e)})") from None


_SKELETONS: dict[str, GPTNeoX] = {}


def _skeleton(cfg: NeoXConfig) -> GPTNeoX:
    """A new model of this shape on the meta device. Building one initializes its embeddings,
    which costs even on the meta device, so one is built per shape and copied."""
    key = repr(cfg)
    if key not in _SKELETONS:
        with torch.device("meta"):
            _SKELETONS[key] = GPTNeoX(cfg)
    return copy.deepcopy(_SKELETONS[key])


def load_model(folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> GPTNeoX:
    """Load any HF GPT-NeoX folder (a real Pythia checkpoint included) as an lmsuite model."""
    folder = resolve_model_folder(folder)
    cfg = read_model_config(folder)
    state = read_weights(folder)
    if "lm_head.weight" in state:  # transformers >= 5 names the output embedding lm_head
        state["embed_out.weight"] = state.pop("lm_head.weight")
    state = {k: v for k, v in state.items() if not k.endswith(_LEGACY_BUFFERS)}
    model = _skeleton(cfg)
    expected = model.state_dict()
    if cfg.tie_embeddings:
        state.pop("embed_out.weight", None)
        expected.pop("embed_out.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DataFormatError(f"{folder}: weights do not match config.json "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise DataFormatError(f"{folder}: {key} has shape {tuple(state[key].shape)}, "
                                  f"config.json implies {tuple(tensor.shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.embed_out.weight = model.gpt_neox.embed_in.weight
    return model.to(device).eval()
