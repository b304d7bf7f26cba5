"""Tensor parallelism as Megatron laid it out for GPT-NeoX, on PyTorch's own DTensor
(`parallelize_module`): within each layer, the fused query_key_value and dense_h_to_4h are split
by output column, attention's dense and dense_4h_to_h by input row, so a layer needs one
all-reduce forward (and one backward) for attention and one for the MLP.

GPT-NeoX's fused QKV is laid out per head as [q_h | k_h | v_h], so a contiguous split of its
3·d_model outputs into N parts gives each process whole heads (heads / N of them): the attention
in between runs on local heads unchanged. The number of heads and d_ff must divide by N.

The input embedding, the final LayerNorm and the output layer are kept whole on every process
(replicated). Splitting the output layer by vocabulary (as Megatron does) saves its memory,
1.5% of pythia-12b's parameters and 22% of pythia-160m's, but needs a vocabulary-parallel loss
(`loss_parallel`) that the rest of lmsuite's scoring does not speak; replicated, the logits and
the loss are computed as without tensor parallelism, and the checkpoints need no reassembly
beyond the layers'.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmsuite.errors import LmsuiteError


def check_divisible(heads: int, d_ff: int, tp: int, model: str) -> None:
    if tp < 1:
        raise LmsuiteError(f"tensor_parallel must be at least 1, got {tp}")
    for what, value in (("heads", heads), ("d_ff", d_ff)):
        if value % tp:
            raise LmsuiteError(f"model {model}: {what} = {value} does not divide by "
                               f"tensor_parallel = {tp}; choose a tensor-parallel size that "
                               f"divides both heads ({heads}) and d_ff ({d_ff})")


def parallelize(model: nn.Module, mesh) -> nn.Module:
    """Split every layer's attention and MLP over the 1-D device mesh `mesh`, in place."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    for layer in model.gpt_neox.layers:
        parallelize_module(layer, mesh, {
            "attention.query_key_value": ColwiseParallel(),
            "attention.dense": RowwiseParallel(),
            "mlp.dense_h_to_4h": ColwiseParallel(),
            "mlp.dense_4h_to_h": RowwiseParallel(),
        })
    return model


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global norm is at most `max_norm` (torch's rule:
    coefficient max_norm / (norm + 1e-6), at most 1); returns the norm before. Works on a mix
    of sharded (DTensor) and whole gradients, as tensor parallelism leaves them: a sharded
    gradient's norm is that of the whole, each counted once."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    squares = []
    for g in grads:
        norm = torch.linalg.vector_norm(g, 2, dtype=torch.float32)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        squares.append(norm ** 2)
    total = torch.stack(squares).sum().sqrt() if squares else torch.zeros(())
    if math.isfinite(max_norm):
        coefficient = float(torch.clamp(max_norm / (total + 1e-6), max=1.0))
        for g in grads:
            g.mul_(coefficient)
    return total
