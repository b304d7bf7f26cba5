"""A parallel-residual layer's training step on CPU as one autograd function.

Recorded operation by operation, a layer of a small model leaves autograd a dozen nodes to
run backward, each with its own dispatch, bookkeeping and fresh buffers: the residual adds,
two output biases that get the same gradient, GELU's gradient written to a new tensor. Here
the forward pass runs the same kernels (`cpu_kernels`) and matrix products, and one backward
function computes every gradient of the layer: the tiny suite's training step is 1–3% faster
(benchmarks/RESULTS.md). It applies only where a backward pass follows and no hook is
registered on the layer's modules; elsewhere the modules run as written in `neox`.
"""

from __future__ import annotations

import sys

import torch

from lmsuite.model.cpu_kernels import (
    MAX_SEQ,
    _first_order_only,
    _hooked,
    _off,
    attention_backward,
    attention_forward,
    gelu_forward,
    layer_norm_pair_backward,
    layer_norm_pair_forward,
)
from lmsuite.model.kernel_build import attention_library, gelu_library, layer_norm_library


class _ParallelBlock(torch.autograd.Function):
    """x + attention(norm1(x)) + mlp(norm2(x)), the layer's parameters as inputs in the order
    of `_parameters`."""

    @staticmethod
    def forward(ctx, x, cos, sin, heads, eps, libs, ln1_w, ln1_b, ln2_w, ln2_b, qkv_w, qkv_b,
                dense_w, dense_b, up_w, up_b, down_w, down_b):
        attention_lib, gelu_lib, norm_lib = libs
        b, t, d = x.shape
        rows = x.view(b * t, d)
        p1, p2, mean, rstd = layer_norm_pair_forward(rows, ln1_w, ln1_b, ln2_w, ln2_b, eps,
                                                     norm_lib)
        qkv = torch.addmm(qkv_b, p1, qkv_w.t())  # (rows, 3 * d_model)
        y, probs, scale = attention_forward(qkv.view(b, t, 3 * d), cos, sin, heads, True,
                                            attention_lib)
        y = y.view(b * t, d)
        a, derivative = gelu_forward(torch.addmm(up_b, p2, up_w.t()), True, gelu_lib)
        # (rows, d_model): the residual stream, then both branches' output products added in
        out = torch.addmm(rows, y, dense_w.t())
        out.addmm_(a, down_w.t())
        out.add_(dense_b + down_b)
        ctx.save_for_backward(rows, cos, sin, ln1_w, ln2_w, mean, rstd, p1, p2, qkv, y, probs, a,
                              derivative, qkv_w, dense_w, up_w, down_w)
        ctx.heads, ctx.scale, ctx.libs = heads, scale, libs
        return out.view(b, t, d)

    @staticmethod
    def backward(ctx, grad):
        _first_order_only()
        (rows, cos, sin, ln1_w, ln2_w, mean, rstd, p1, p2, qkv, y, probs, a, derivative, qkv_w,
         dense_w, up_w, down_w) = ctx.saved_tensors
        attention_lib, _, norm_lib = ctx.libs
        need = ctx.needs_input_grad  # a frozen weight's product is skipped (input saliency)

        def weight_grad(i, grad_out, inputs):  # (out_features, in_features)
            return grad_out.t() @ inputs if need[i] else None

        def bias_grad(i, grad_out):
            return grad_out.sum(0) if need[i] else None

        b, t, d = grad.shape
        g = grad.reshape(b * t, d)
        dh = (g @ down_w).mul_(derivative)  # (rows, d_ff): a new product, so changed in place
        dqkv = attention_backward(qkv.view(b, t, 3 * d), cos, sin, y.view(b, t, d), probs,
                                  (g @ dense_w).view(b, t, d), ctx.heads, ctx.scale,
                                  attention_lib).view(b * t, 3 * d)
        dx, ln1_w_grad, ln1_b_grad, ln2_w_grad, ln2_b_grad = layer_norm_pair_backward(
            rows, ln1_w, ln2_w, mean, rstd, dqkv @ qkv_w, dh @ up_w, norm_lib)
        dx.add_(g)  # the residual stream's own gradient
        out_bias = g.sum(0)  # the gradient of both output biases, handed out as two tensors
        return (dx.view(b, t, d), None, None, None, None, None,
                ln1_w_grad, ln1_b_grad, ln2_w_grad, ln2_b_grad,
                weight_grad(10, dqkv, p1), bias_grad(11, dqkv),
                weight_grad(12, g, y), out_bias if need[13] else None,
                weight_grad(14, dh, p2), bias_grad(15, dh),
                weight_grad(16, g, a), out_bias.clone() if need[17] else None)


def _parameters(layer: torch.nn.Module) -> list[torch.Tensor | None]:
    """The layer's parameters, in the order `_ParallelBlock` takes them."""
    att, mlp = layer.attention, layer.mlp
    modules = (layer.input_layernorm, layer.post_attention_layernorm, att.query_key_value,
               att.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h)
    return [p for m in modules for p in (m.weight, m.bias)]


def fused_parallel_block(layer: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor) -> torch.Tensor | None:
    """A parallel-residual `NeoXLayer`'s output for x (batch, seq, d_model) without a mask or
    cache, when a backward pass follows; None when this does not apply, and the caller then
    runs the layer's modules."""
    b, t, d = x.shape
    params = _parameters(layer)
    heads = layer.attention.heads
    if (_off() or not torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")
            or any(p is None or p.dtype != torch.float32 or p.device.type != "cpu"
                   for p in params)
            or not (x.requires_grad or any(p.requires_grad for p in params))
            or any(_hooked(m) for m in layer.modules() if m is not layer)
            or x.device.type != "cpu" or x.dtype != torch.float32 or cos.dtype != torch.float32
            or layer.mlp.approximate != "none" or d % 8 or t > MAX_SEQ
            or layer.input_layernorm.normalized_shape != (d,)
            or layer.post_attention_layernorm.normalized_shape != (d,)
            or layer.input_layernorm.eps != layer.post_attention_layernorm.eps
            or not sys.platform.startswith("linux")):
        return None
    libs = attention_library(d // heads), gelu_library(), layer_norm_library()
    if None in libs:
        return None
    return _ParallelBlock.apply(x.contiguous(), cos.contiguous(), sin.contiguous(), heads,
                                layer.input_layernorm.eps, libs,
                                *(p.contiguous() for p in params))

