"""Memory per GPU of training a size, by layout: what `lmsuite model info --memory` prints.

Per parameter, as lmsuite trains: fp32 weights (4 bytes; bf16 autocast casts them on the fly),
fp32 gradients (4) and AdamW's two fp32 moments (8). Activations at micro-batch b, sequence s,
width h, in bf16 with flash attention (no s x s scores kept), after Korthikanti et al. (2022,
"Reducing activation recomputation in large transformer models"): 34·s·b·h bytes per layer,
s·b·h·(10 + 24/t) under tensor parallelism over t GPUs (no sequence parallelism), and with
activation checkpointing 2·s·b·h per layer (its input) plus one layer's full set while it is
recomputed. The logits add s·b·V·6 bytes (bf16, and the fp32 copy the loss reads).

Layouts: DDP (every GPU holds everything), FSDP over G GPUs (weights, gradients and optimizer
state divided by G; activations whole), and TP t x DP d as lmsuite lays it out (the layers'
matrices divided by t, embeddings and output layer whole; FSDP divides the state by d).
Estimates: allocator fragmentation, communication buffers and the CUDA context (about 1 GiB)
come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmsuite.model.neox import NeoXConfig, count_parameters

GiB = 2**30
STATE_BYTES = {"weights": 4, "gradients": 4, "optimizer": 8}


@dataclass(frozen=True)
class Layout:
    name: str
    gpus: int
    fsdp: int = 1
    """GPUs the model state is divided over by FSDP."""
    tp: int = 1


@dataclass(frozen=True)
class Estimate:
    layout: Layout
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def activation_bytes(cfg: NeoXConfig, micro_batch: int, seq: int, tp: int = 1,
                     recompute: bool = False) -> int:
    """Activations kept for the backward pass of one micro-batch, on one GPU."""
    sbh = seq * micro_batch * cfg.d_model
    per_layer = sbh * (10 + 24 // tp) if tp > 1 else 34 * sbh
    layers = (2 * sbh * cfg.layers + per_layer) if recompute else per_layer * cfg.layers
    return layers + seq * micro_batch * cfg.vocab_size * 6


def estimate(cfg: NeoXConfig, layout: Layout, micro_batch: int, seq: int,
             recompute: bool = False) -> Estimate:
    total = count_parameters(cfg)
    embeddings = total - count_parameters(cfg, embeddings=False)
    layer_params = total - embeddings
    held = (embeddings + layer_params / layout.tp) / layout.fsdp
    state = {k: int(held * b) for k, b in STATE_BYTES.items()}
    return Estimate(layout, state["weights"], state["gradients"], state["optimizer"],
                    activation_bytes(cfg, micro_batch, seq, layout.tp, recompute))


def layouts(cfg: NeoXConfig, gpus_per_node: int = 8, max_gpus: int = 1024) -> list[Layout]:
    """Candidate layouts, fewest GPUs first: DDP on one, then per GPU count FSDP, TP within a
    node (t dividing the heads and d_ff), and TP x FSDP."""
    out = [Layout("DDP", 1)]
    g = 2
    while g <= max_gpus:
        for t in (2, 4, 8):
            if t <= min(g, gpus_per_node) and cfg.heads % t == 0 and cfg.d_ff % t == 0:
                d = g // t
                out.append(Layout(f"TP {t}" if d == 1 else f"TP {t} x FSDP {d}", g, fsdp=d,
                                  tp=t))
        out.append(Layout(f"FSDP x{g}", g, fsdp=g))
        g *= 2
    return out


def smallest_fitting(cfg: NeoXConfig, gpu_bytes: int, micro_batch: int, seq: int,
                     recompute: bool = False) -> Estimate | None:
    """The layout with the fewest GPUs whose estimate fits `gpu_bytes` per GPU (DDP before
    TP before FSDP at equal count), or None."""
    for layout in layouts(cfg):
        found = estimate(cfg, layout, micro_batch, seq, recompute)
        if found.total <= gpu_bytes:
            return found
    return None


def parse_bytes(text: str) -> int:
    """"80GiB", "80GB", "141 GiB", "80" (GiB) -> bytes."""
    value = text.strip().replace(" ", "")
    units = {"gib": GiB, "gb": 10**9, "mib": 2**20, "mb": 10**6, "tib": 2**40}
    for unit, scale in units.items():
        if value.lower().endswith(unit):
            return int(float(value[: -len(unit)]) * scale)
    return int(float(value) * GiB)
