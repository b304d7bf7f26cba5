"""The C kernels' calls and their backward passes, for `accel.layer`.

On a CPU, a small model's step spends as much time on the glue around its matrix products as
on the products themselves. Four kernels take the largest parts of it, forward and backward:
- attention: rotary embedding and causal attention of a layer, from the fused QKV projection
  to the heads' outputs side by side (`csrc/attention.c`), replacing the transposes, slices,
  concatenations and copies around PyTorch's attention;
- cross-entropy: the loss and its gradient in one pass over the logits
  (`csrc/cross_entropy.c`);
- GELU: exact GELU with a vectorized erf and exp, writing its derivative in the same pass when
  a backward pass follows, so that the backward pass is one multiplication (`csrc/gelu.c`);
- LayerNorm pair: the parallel block's two LayerNorms of the same rows in one pass, and their
  backward pass in one pass (`csrc/layer_norm.c`).

Each runs on PyTorch's own OpenMP threads, and its results do not depend on their number.
`disabled()` turns them off within a block, and so do torch.compile while it traces the model
and torch.func's transforms. Given a batch of gradients (`is_grads_batched`), a kernel's
backward pass runs in PyTorch's operations.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

MAX_SEQ = 512
"""Longest sequence the attention kernel takes: it keeps batch * heads * seq^2 probabilities."""


_disabled_depth = 0


@contextmanager
def disabled() -> Iterator[None]:
    """Within: the model uses PyTorch's operations only (to compare against the kernels)."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


# The innermost active torch.func transform, or None (private to PyTorch, so looked up with a
# fallback: where it is missing, a transform meets the kernels and PyTorch refuses them loudly).
_functorch_transform = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack",
                               lambda: None)


def kernels_off() -> bool:
    """True within `disabled()`; while torch.compile traces the model (the compiler cannot see
    into a kernel, and fuses PyTorch's operations itself); and under torch.func's transforms
    (`grad`, `vmap`, ...: per-example gradients and the like), which need PyTorch's
    operations."""
    return (bool(_disabled_depth) or torch.compiler.is_compiling()
            or _functorch_transform() is not None)


def first_order_only() -> None:
    """Called first in each kernel's backward pass. Grad mode is on there only when the caller
    asked for a graph of the gradient (`create_graph=True`), for second-order gradients such as
    Hessian-vector products; a kernel's gradient carries no such graph, so those would come out
    silently wrong."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "lmsuite's CPU kernels give first-order gradients only (create_graph=True asks for "
            "more): run the forward pass inside lmsuite.accel.disabled(), or with "
            "LMSUITE_CPU_KERNELS=0, to differentiate through PyTorch's operations")


def _without_storage(t: torch.Tensor) -> bool:
    """Whether t has no memory of its own for a kernel to read: the batched gradients of
    `torch.autograd.grad(..., is_grads_batched=True)` and of
    `torch.autograd.functional.jacobian(..., vectorize=True)`. A kernel's backward pass then
    computes its gradient with PyTorch's operations, which handle the batch."""
    try:
        t.data_ptr()
    except RuntimeError:
        return True
    return False


@contextmanager
def _unfilled() -> Iterator[None]:
    """Within: new tensors are not filled first. Under deterministic algorithms PyTorch fills
    every `empty` tensor with NaN; the kernels write every element of their outputs, and the
    fill would cost as much as a tenth of a small model's step."""
    deterministic = torch.utils.deterministic
    saved = deterministic.fill_uninitialized_memory
    deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        deterministic.fill_uninitialized_memory = saved


def attention_forward(qkv, cos, sin, heads, backward, lib):
    """The attention kernel's forward pass: (output, the probabilities kept for the backward
    pass or None, the scale of the scores)."""
    b, t, width = qkv.shape
    head_dim = width // (3 * heads)
    t8 = -(-t // 8) * 8
    with _unfilled():
        res = qkv.new_empty(b, t, heads * head_dim)
        # the softmax probabilities, for the backward pass only
        probs = qkv.new_empty(b, heads, t8, t8) if backward else None
    scale = 1.0 / math.sqrt(head_dim)
    if lib.attention_forward(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), res.data_ptr(),
                             None if probs is None else probs.data_ptr(), b, t, heads,
                             cos.shape[-1], scale, torch.get_num_threads()):
        raise MemoryError("attention kernel: out of memory for its scratch buffers")
    return res, probs, scale


def attention_backward(qkv, cos, sin, res, probs, grad, heads, scale, lib):
    """The gradient of attention_forward's output, `grad`, -> the gradient of qkv."""
    if _without_storage(grad):
        return _attention_backward_pytorch(qkv, cos, sin, probs, grad, heads, scale)
    grad = grad.contiguous()
    with _unfilled():
        dqkv = torch.empty_like(qkv)
    b, t, _ = qkv.shape
    if lib.attention_backward(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), res.data_ptr(),
                              grad.data_ptr(), probs.data_ptr(), dqkv.data_ptr(), b, t, heads,
                              cos.shape[-1], scale, torch.get_num_threads()):
        raise MemoryError("attention kernel: out of memory for its scratch buffers")
    return dqkv


def _attention_backward_pytorch(qkv, cos, sin, probs, grad, heads, scale):
    """The attention kernel's backward pass in PyTorch's operations, from the probabilities
    the forward pass kept (rows zero or unwritten past the diagonal)."""
    b, t, width = qkv.shape
    head_dim = width // (3 * heads)
    rot = cos.shape[-1]
    half = rot // 2

    def rotate(x):  # as neox.apply_rotary, on (batch, heads, seq, head_dim)
        r = x[..., :rot]
        turned = torch.cat((-r[..., half:], r[..., :half]), dim=-1)
        return torch.cat((r * cos + turned * sin, x[..., rot:]), dim=-1)

    def unrotate(g):  # the transpose of rotate
        r = g[..., :rot] * sin
        turned = torch.cat((r[..., half:], -r[..., :half]), dim=-1)
        return torch.cat((g[..., :rot] * cos + turned, g[..., rot:]), dim=-1)

    q, k, v = qkv.view(b, t, heads, 3 * head_dim).transpose(1, 2).split(head_dim, dim=-1)
    q, k = rotate(q) * scale, rotate(k)
    p = probs[:, :, :t, :t].tril()
    d_out = grad.view(b, t, heads, head_dim).transpose(1, 2)
    dv = p.transpose(-1, -2) @ d_out
    dp = d_out @ v.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = unrotate(ds @ k) * scale
    dk = unrotate(ds.transpose(-1, -2) @ q)
    return torch.cat((dq, dk, dv), dim=-1).transpose(1, 2).reshape(b, t, width)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, ignore_index, lib):
        n, vocab = logits.shape
        with _unfilled():
            grad = torch.empty_like(logits)
            row_loss = logits.new_empty(n)
        total, bad = ctypes.c_double(), ctypes.c_long()
        count = lib.cross_entropy(logits.data_ptr(), labels.data_ptr(), grad.data_ptr(),
                                  row_loss.data_ptr(), n, vocab, ignore_index,
                                  torch.get_num_threads(), ctypes.byref(total), ctypes.byref(bad))
        if count < 0:
            raise IndexError(f"cross_entropy: label {int(labels[bad.value])} at row {bad.value} "
                             f"is out of range for {vocab} classes")
        ctx.save_for_backward(grad)  # freed by PyTorch after the backward pass, as usual
        ctx.factor, ctx.handed_out = 1.0, False
        return logits.new_tensor(total.value / count if count else float("nan"))

    @staticmethod
    def backward(ctx, g):
        first_order_only()
        # PyTorch refuses here if the gradient handed out before was changed in place since.
        (grad,) = ctx.saved_tensors  # the gradient of the mean loss, times ctx.factor
        if ctx.handed_out or _without_storage(g):  # again (retain_graph), or a batch of them
            return grad * (g / ctx.factor), None, None, None
        # The first time, the saved gradient itself is handed out, scaled in place: no copy of
        # a logits-sized tensor. Scaled through .data, so that PyTorch's version check still
        # lets a later backward pass (retain_graph) read it, and rescale it by ctx.factor.
        factor = g.item()
        if factor == 0.0:
            return torch.zeros_like(grad), None, None, None
        if factor != 1.0:
            grad.data.mul_(factor)
            ctx.factor = factor
        ctx.handed_out = True
        return grad, None, None, None


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                  lib) -> torch.Tensor | None:
    """Mean cross-entropy of logits (rows, classes) against labels (rows,), as
    `F.cross_entropy(logits, labels, ignore_index=ignore_index)`; None when the kernel does
    not apply to these tensors, and the caller then uses PyTorch's."""
    if (kernels_off() or logits.device.type != "cpu" or logits.dtype != torch.float32
            or logits.ndim != 2 or labels.dtype != torch.int64 or logits.shape[1] >= 2**31):
        return None
    return _CrossEntropy.apply(logits.contiguous(), labels.contiguous(), ignore_index, lib)


def gelu_forward(x, backward, lib):
    """The GELU kernel: (gelu(x), gelu'(x) when a backward pass follows, else None)."""
    with _unfilled():
        y = torch.empty_like(x)
        # gelu'(x), computed with y from the same erf and exp, when a backward pass follows
        derivative = torch.empty_like(x) if backward else None
    lib.gelu_forward(x.data_ptr(), y.data_ptr(),
                     None if derivative is None else derivative.data_ptr(), x.numel(),
                     torch.get_num_threads())
    return y, derivative


def hooked(module: torch.nn.Module) -> bool:
    """Whether calling the module would run hooks (a researcher's probe on its output or its
    gradient), which a kernel standing in for the module would skip."""
    hooks = torch.nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or hooks._global_forward_hooks
                or hooks._global_forward_pre_hooks or hooks._global_backward_hooks
                or hooks._global_backward_pre_hooks)


_LN_CHUNK = 64  # rows per partial sum of the weight and bias gradients (CHUNK in layer_norm.c)


def layer_norm_pair_forward(x, w1, b1, w2, b2, eps, lib):
    """The LayerNorm pair kernel over x's rows: (first output, second output, each row's mean,
    each row's 1 / standard deviation)."""
    d = x.shape[-1]
    n = x.numel() // d
    with _unfilled():
        y1, y2 = torch.empty_like(x), torch.empty_like(x)
        mean, rstd = x.new_empty(n), x.new_empty(n)
    lib.layer_norm_pair_forward(x.data_ptr(), w1.data_ptr(), b1.data_ptr(), w2.data_ptr(),
                                b2.data_ptr(), y1.data_ptr(), y2.data_ptr(), mean.data_ptr(),
                                rstd.data_ptr(), n, d, eps, torch.get_num_threads())
    return y1, y2, mean, rstd


def layer_norm_pair_backward(x, w1, w2, mean, rstd, g1, g2, lib):
    """The gradients g1, g2 of the pair's two outputs -> dx, dw1, db1, dw2, db2."""
    if _without_storage(g1) or _without_storage(g2):
        return _layer_norm_pair_backward_pytorch(x, w1, w2, mean, rstd, g1, g2)
    g1, g2 = g1.contiguous(), g2.contiguous()
    d = x.shape[-1]
    n = x.numel() // d
    with _unfilled():
        dx = torch.empty_like(x)
        grads = x.new_empty(4, d)
        partial = x.new_empty(-(-n // _LN_CHUNK), 4, d)
    lib.layer_norm_pair_backward(x.data_ptr(), w1.data_ptr(), w2.data_ptr(), mean.data_ptr(),
                                 rstd.data_ptr(), g1.data_ptr(), g2.data_ptr(), dx.data_ptr(),
                                 grads.data_ptr(), partial.data_ptr(), n, d,
                                 torch.get_num_threads())
    return dx, grads[0], grads[1], grads[2], grads[3]


def _layer_norm_pair_backward_pytorch(x, w1, w2, mean, rstd, g1, g2):
    """The LayerNorm pair's backward pass in PyTorch's operations: dx, dw1, db1, dw2, db2."""
    d = x.shape[-1]
    mean, rstd = mean.view(*x.shape[:-1], 1), rstd.view(*x.shape[:-1], 1)
    xhat = (x - mean) * rstd
    dxhat = g1 * w1 + g2 * w2
    dx = rstd * (dxhat - dxhat.mean(-1, keepdim=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdim=True))
    return (dx, (g1 * xhat).reshape(-1, d).sum(0), g1.reshape(-1, d).sum(0),
            (g2 * xhat).reshape(-1, d).sum(0), g2.reshape(-1, d).sum(0))
