"""The model with accel's kernels: `install` turns a built GPTNeoX's layers and loss into
subclasses that run them, where the model's shape allows; everything else stays as
`lmsuite.model.neox` writes it.

In training, a parallel-residual layer runs as one autograd function: recorded operation by
operation, a layer of a small model leaves autograd a dozen nodes to run backward, each with
its own dispatch, bookkeeping and fresh buffers (the residual adds, two output biases that get
the same gradient, GELU's gradient written to a new tensor). Here the forward pass runs the
kernels and the layer's matrix products, and one backward function computes every gradient of
the layer. Without a backward pass (scoring) the same kernels run without keeping anything
for one. With a padding mask or a key-value cache (generation), a hook on one of the layer's
modules, a sequence longer than the attention kernel takes, or tensors that are not fp32 on
the CPU, the layer runs as `neox` writes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmsuite.accel.kernels import (
    MAX_SEQ,
    attention_backward,
    attention_forward,
    cross_entropy,
    first_order_only,
    gelu_forward,
    hooked,
    kernels_off,
    layer_norm_pair_backward,
    layer_norm_pair_forward,
)
from lmsuite.accel.libraries import (
    attention_library,
    cross_entropy_library,
    gelu_library,
    layer_norm_library,
)
from lmsuite.model.neox import GPTNeoX, NeoXLayer


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
        first_order_only()
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


def _libraries(layer: NeoXLayer) -> tuple | None:
    """The layer's three kernel libraries (cached after the first call), or None."""
    libs = (attention_library(layer.attention.head_dim), gelu_library(), layer_norm_library())
    return None if None in libs else libs


def _inference(layer: NeoXLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               libs: tuple) -> torch.Tensor:
    """The layer's output with no backward pass to follow (scoring): the kernels, keeping
    nothing for a backward pass."""
    attention_lib, gelu_lib, norm_lib = libs
    att, mlp = layer.attention, layer.mlp
    b, t, d = x.shape
    p1, p2, _, _ = layer_norm_pair_forward(
        x.reshape(b * t, d), layer.input_layernorm.weight, layer.input_layernorm.bias,
        layer.post_attention_layernorm.weight, layer.post_attention_layernorm.bias,
        layer.input_layernorm.eps, norm_lib)
    qkv = F.linear(p1.view(b, t, d), att.query_key_value.weight, att.query_key_value.bias)
    y, _, _ = attention_forward(qkv, cos, sin, att.heads, False, attention_lib)
    a, _ = gelu_forward(F.linear(p2.view(b, t, d), mlp.dense_h_to_4h.weight,
                                 mlp.dense_h_to_4h.bias), False, gelu_lib)
    return x + att.dense(y) + mlp.dense_4h_to_h(a)


class FastNeoXLayer(NeoXLayer):
    """A parallel-residual NeoXLayer whose forward pass runs the kernels where they apply."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, kv: list | None = None) -> torch.Tensor:
        params = _parameters(self)
        if mask is not None or kv is not None or not _applies(self, x, cos, params):
            return super().forward(x, cos, sin, mask, kv)
        libs = _libraries(self)
        if not (torch.is_grad_enabled()
                and (x.requires_grad or any(p.requires_grad for p in params))):
            return _inference(self, x.contiguous(), cos.contiguous(), sin.contiguous(), libs)
        return _ParallelBlock.apply(x.contiguous(), cos.contiguous(), sin.contiguous(),
                                    self.attention.heads, self.input_layernorm.eps, libs,
                                    *(p.contiguous() for p in params))


def _applies(layer: NeoXLayer, x: torch.Tensor, cos: torch.Tensor, params: list) -> bool:
    """What can change from call to call: where and how the layer runs, and its hooks."""
    return not (kernels_off() or torch.is_autocast_enabled("cpu")
                or x.device.type != "cpu" or x.dtype != torch.float32
                or cos.dtype != torch.float32 or x.shape[1] > MAX_SEQ
                or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params)
                or any(hooked(m) for m in layer.modules() if m is not layer))


class FastGPTNeoX(GPTNeoX):
    """A GPTNeoX whose loss runs the cross-entropy kernel where it applies."""

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = None if kernels_off() else cross_entropy(logits, labels, -100,
                                                         cross_entropy_library())
        return super().cross_entropy(logits, labels) if loss is None else loss


def _fits(layer: NeoXLayer) -> bool:
    """Whether the layer's shape is one the kernels take (decided once, at install)."""
    d = layer.attention.heads * layer.attention.head_dim
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    return (type(layer) in (NeoXLayer, FastNeoXLayer) and layer.parallel_residual
            and layer.mlp.approximate == "none" and d % 8 == 0
            and all(n.normalized_shape == (d,) and n.weight is not None for n in norms)
            and norms[0].eps == norms[1].eps and _libraries(layer) is not None)


def install_kernels(model: GPTNeoX) -> list[str]:
    """Attach the kernels that fit the model (fp32 on the CPU); the names of those attached."""
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        return []
    attached = []
    if type(model) in (GPTNeoX, FastGPTNeoX) and cross_entropy_library() is not None:
        model.__class__ = FastGPTNeoX
        attached.append("cross_entropy")
    layers = list(model.gpt_neox.layers)
    if layers and all(_fits(layer) for layer in layers):
        for layer in layers:
            layer.__class__ = FastNeoXLayer
        attached += ["attention", "gelu", "layer_norm_pair", "parallel_block"]
    return attached
