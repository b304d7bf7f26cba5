"""Each C kernel, forward and backward, against PyTorch's operations in float64."""

import weakref

import pytest
import torch
import torch.nn.functional as F

from lmsuite.accel import kernels as K
from lmsuite.accel.libraries import (
    attention_library,
    cross_entropy_library,
    gelu_library,
    layer_norm_library,
)
from lmsuite.model.neox import apply_rotary, rotary_tables
from tests.accel.conftest import at_one_and_three_threads


def reference_attention(qkv, cos, sin, heads, dtype=torch.float64):
    """Rotary + causal attention the plain way, in float64 unless told otherwise."""
    qkv, cos, sin = qkv.to(dtype), cos.to(dtype), sin.to(dtype)
    b, t, width = qkv.shape
    hd = width // (3 * heads)
    q, k, v = qkv.view(b, t, heads, 3 * hd).transpose(1, 2).split(hd, dim=-1)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(b, t, heads * hd)


def kernel_attention(qkv, cos, sin, heads, grad=None):
    """The attention kernel's output and, given `grad`, its backward pass's gradient of qkv."""
    lib = attention_library(qkv.shape[-1] // (3 * heads))
    y, probs, scale = K.attention_forward(qkv, cos, sin, heads, grad is not None, lib)
    if grad is None:
        return y, None
    return y, K.attention_backward(qkv, cos, sin, y, probs, grad, heads, scale, lib)


@pytest.mark.parametrize("batch, seq, heads, head_dim, rotary_dims", [
    (3, 37, 2, 8, 2),     # sequence not a multiple of 8
    (2, 64, 3, 16, 4),    # the tiny suite's heads
    (2, 21, 2, 24, 3),    # odd rotary width (rounded up to 4, as HF does); 3 vectors a row
    (1, 128, 1, 32, 32),  # rotary on the whole head
    (2, 9, 4, 16, 0),     # no rotary
    (1, 1, 2, 8, 2),      # a single token
    (2, 33, 2, 64, 16),   # Pythia's 64-wide heads
])
def test_attention_kernel_matches_rotary_plus_sdpa_forward_and_backward(
        kernels, batch, seq, heads, head_dim, rotary_dims):
    gen = torch.Generator().manual_seed(seq)
    qkv = torch.randn(batch, seq, 3 * heads * head_dim, generator=gen) * 2
    cos, sin = rotary_tables(seq, rotary_dims, 10000.0)
    grad = torch.randn(batch, seq, heads * head_dim, generator=gen)

    y, dqkv = kernel_attention(qkv, cos, sin, heads, grad)
    x_ref = qkv.double().requires_grad_()
    y_ref = reference_attention(x_ref, cos, sin, heads)
    y_ref.backward(grad.double())
    x32 = qkv.clone().requires_grad_()  # PyTorch's own float32 path, for the rounding to expect
    y32 = reference_attention(x32, cos, sin, heads, dtype=torch.float32)
    y32.backward(grad)

    def error(a, b):
        return (a.double() - b).abs().max().item()

    assert error(y, y_ref) <= 3 * error(y32, y_ref) + 1e-6
    assert error(dqkv, x_ref.grad) <= 3 * error(x32.grad, x_ref.grad) + 1e-6
    torch.testing.assert_close(y.double(), y_ref.detach(), atol=1e-5, rtol=1e-5)


def test_attention_kernel_does_not_depend_on_the_thread_count(kernels):
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(4, 50, 3 * 3 * 16, generator=gen)
    cos, sin = rotary_tables(50, 4, 10000.0)
    grad = torch.randn(4, 50, 3 * 16, generator=gen)

    for one, three in zip(*at_one_and_three_threads(
            lambda: kernel_attention(qkv, cos, sin, 3, grad)), strict=True):
        assert torch.equal(one, three)


def test_attention_kernel_without_a_backward_pass_gives_the_same_bits(kernels):
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(3, 45, 3 * 2 * 16, generator=gen)
    cos, sin = rotary_tables(45, 4, 10000.0)
    lib = attention_library(16)
    with_probs = K.attention_forward(qkv, cos, sin, 2, True, lib)
    without = K.attention_forward(qkv, cos, sin, 2, False, lib)
    assert without[1] is None  # no probabilities kept
    assert torch.equal(with_probs[0], without[0])


def cross_entropy(logits, labels):
    return K.cross_entropy(logits, labels, -100, cross_entropy_library())


@pytest.mark.parametrize("rows, classes", [(64, 2048), (33, 1003), (5, 7), (3, 50304)])
def test_cross_entropy_kernel_matches_pytorch(kernels, rows, classes):
    gen = torch.Generator().manual_seed(classes)
    logits = torch.randn(rows, classes, generator=gen) * 4
    logits[0, :3] = 60.0  # large logits: the max is subtracted before exp
    labels = torch.randint(0, classes, (rows,), generator=gen)
    labels[1] = -100
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, labels)
    (loss * 3).backward()
    x_ref = logits.clone().requires_grad_()
    ref = F.cross_entropy(x_ref, labels, ignore_index=-100)
    (ref * 3).backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-7, rtol=1e-5)
    assert torch.all(x.grad[1] == 0)  # the ignored row


def test_cross_entropy_kernel_edge_cases(kernels):
    logits = torch.randn(4, 10)
    assert torch.isnan(cross_entropy(logits, torch.full((4,), -100)))  # as PyTorch
    with pytest.raises(IndexError, match="label 10 at row 2 is out of range for 10 classes"):
        cross_entropy(logits, torch.tensor([1, 2, 10, 3]))
    assert cross_entropy(logits.double(), torch.tensor([1, 2, 3, 4])) is None
    with K.disabled():
        assert cross_entropy(logits, torch.tensor([1, 2, 3, 4])) is None


def test_cross_entropy_kernel_backpropagates_again_with_retain_graph(kernels):
    # Its first backward pass hands out the gradient it kept, scaled in place; later ones
    # (retain_graph) rescale that, and refuse if someone has changed it in place since.
    logits, labels = torch.randn(6, 10), torch.tensor([1, 2, 3, 4, 5, -100])
    x = logits.clone().requires_grad_()
    loss = cross_entropy(x, labels)
    (first,) = torch.autograd.grad(3 * loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x, retain_graph=True)
    x_ref = logits.double().requires_grad_()
    (expected,) = torch.autograd.grad(F.cross_entropy(x_ref, labels), x_ref)
    torch.testing.assert_close(first.double(), 3 * expected, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(second.double(), expected, atol=1e-7, rtol=1e-5)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad.double(), 2 * expected, atol=1e-7, rtol=1e-5)
    first.add_(1.0)  # the handed-out gradient, changed in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_cross_entropy_kernel_frees_its_saved_gradient_after_the_backward_pass(kernels):
    # Training keeps `loss` for logging after backward(); the logits-sized gradient the kernel
    # kept must not stay alive with it.
    kept = []

    def pack(t):
        kept.append(weakref.ref(t))
        return t

    x = torch.randn(6, 10, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = cross_entropy(x * 2, torch.tensor([1, 2, 3, 4, 5, 6]))
    assert kept and all(ref() is not None for ref in kept)
    loss.backward()
    assert loss.grad_fn is not None and all(ref() is None for ref in kept)


@pytest.mark.parametrize("shape", [(3, 7, 11), (2048, 64), (5,)])
def test_gelu_kernel_matches_exact_gelu_and_its_derivative(kernels, shape):
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen) * 3
    x.view(-1)[:4] = torch.tensor([0.0, -12.0, 12.0, -0.5])[: x.numel()]
    y, derivative = K.gelu_forward(x, True, gelu_library())
    b = x.double().requires_grad_()
    ref = F.gelu(b)  # float64: erf to double precision
    ref.backward(torch.ones_like(b))
    torch.testing.assert_close(y.double(), ref.detach(), atol=4e-7, rtol=1e-6)
    torch.testing.assert_close(derivative.double(), b.grad, atol=4e-7, rtol=1e-6)
    without, none = K.gelu_forward(x, False, gelu_library())
    assert none is None and torch.equal(without, y)  # no derivative kept: the same values


def layer_norms(width, seed, eps=1e-5):
    gen = torch.Generator().manual_seed(seed)
    pair = torch.nn.LayerNorm(width, eps=eps), torch.nn.LayerNorm(width, eps=eps)
    with torch.no_grad():
        for ln in pair:
            ln.weight.copy_(torch.randn(width, generator=gen))
            ln.bias.copy_(torch.randn(width, generator=gen))
    return pair


def kernel_layer_norm_pair(x, first, second, g1, g2):
    """The pair kernel's two outputs and the gradients of x, w1, b1, w2, b2 for g1, g2."""
    lib = layer_norm_library()
    rows = x.reshape(-1, x.shape[-1])
    w1, b1, w2, b2 = (p.detach() for p in (first.weight, first.bias, second.weight,
                                           second.bias))
    y1, y2, mean, rstd = K.layer_norm_pair_forward(rows, w1, b1, w2, b2, first.eps, lib)
    grads = K.layer_norm_pair_backward(rows, w1, w2, mean, rstd, g1.reshape(rows.shape),
                                       g2.reshape(rows.shape), lib)
    return [y1.view(x.shape), y2.view(x.shape), grads[0].view(x.shape), *grads[1:]]


@pytest.mark.parametrize("shape", [(3, 5, 16), (130, 64), (2, 64, 160), (1, 8)])
def test_layer_norm_pair_kernel_matches_two_layer_norms(kernels, shape):
    # rows not a multiple of the kernel's 64-row chunks, a single row, the tiny suite's widths
    first, second = layer_norms(shape[-1], len(shape))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen) * 3 + 1
    g1, g2 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    got = kernel_layer_norm_pair(x, first, second, g1, g2)
    params = [x, first.weight, first.bias, second.weight, second.bias]
    ref = [p.detach().double().requires_grad_() for p in params]
    r1 = F.layer_norm(ref[0], shape[-1:], ref[1], ref[2], first.eps)
    r2 = F.layer_norm(ref[0], shape[-1:], ref[3], ref[4], second.eps)
    ref_grads = torch.autograd.grad((r1 * g1.double()).sum() + (r2 * g2.double()).sum(), ref)
    for a, b in zip(got, [r1.detach(), r2.detach(), *ref_grads], strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def test_layer_norm_pair_kernel_does_not_depend_on_the_thread_count(kernels):
    first, second = layer_norms(64, 5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(300, 64, generator=gen)
    g1, g2 = torch.randn(300, 64, generator=gen), torch.randn(300, 64, generator=gen)
    for one, three in zip(*at_one_and_three_threads(
            lambda: kernel_layer_norm_pair(x, first, second, g1, g2)), strict=True):
        assert torch.equal(one, three)
