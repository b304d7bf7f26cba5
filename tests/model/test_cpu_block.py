import copy

import pytest
import torch

from lmsuite.model import cpu_kernels
from lmsuite.model.cpu_block import fused_parallel_block
from lmsuite.model.kernel_build import gelu_library, layer_norm_library
from lmsuite.model.neox import NeoXConfig, NeoXLayer, rotary_tables


@pytest.fixture(scope="module")
def block_kernels(kernels):
    if gelu_library() is None or layer_norm_library() is None:
        pytest.skip("the CPU GELU and LayerNorm kernels cannot be built here")


def make_layer(d_model: int, heads: int, seed: int = 0) -> NeoXLayer:
    """A layer whose every parameter is random, so that a gradient mixed up between two
    parameters of the same shape shows."""
    layer = NeoXLayer(NeoXConfig(vocab_size=64, layers=1, d_model=d_model, heads=heads))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim == 1 else 0.1))
    return layer


def run(layer, x, cos, sin, grad):
    """The layer's output, and the gradients of x and of every parameter."""
    x = x.clone().requires_grad_()
    out = layer(x, cos, sin)
    out.backward(grad)
    return out, x.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize("batch, seq, d_model, heads", [
    (3, 37, 48, 3),   # sequence not a multiple of 8; 111 rows, not a multiple of 64
    (2, 64, 64, 4),   # the tiny suite's 16-wide heads
    (1, 5, 128, 2),   # Pythia's 64-wide heads
])
def test_the_fused_layer_matches_its_modules_forward_and_backward(block_kernels, batch, seq,
                                                                  d_model, heads):
    layer = make_layer(d_model, heads)
    reference = copy.deepcopy(layer).double()
    gen = torch.Generator().manual_seed(seq)
    x = torch.randn(batch, seq, d_model, generator=gen)
    grad = torch.randn(batch, seq, d_model, generator=gen)
    cos, sin = rotary_tables(seq, layer.attention.head_dim // 4, 10000.0)

    out, dx, grads = run(layer, x, cos, sin, grad)
    assert type(out.grad_fn).__name__ == "_ParallelBlockBackward"
    with cpu_kernels.disabled():  # the modules as written, on PyTorch's operations, in float64
        out_ref, dx_ref, grads_ref = run(reference, x.double(), cos.double(), sin.double(),
                                         grad.double())
    assert type(out_ref.grad_fn).__name__ != "_ParallelBlockBackward"
    torch.testing.assert_close(out.double(), out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx.double(), dx_ref, atol=1e-5, rtol=1e-4)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name].double(), g, atol=1e-5, rtol=1e-4, msg=name)
    # the two output biases get equal gradients, in tensors of their own
    dense_bias, down_bias = grads["attention.dense.bias"], grads["mlp.dense_4h_to_h.bias"]
    assert torch.equal(dense_bias, down_bias)
    assert dense_bias.data_ptr() != down_bias.data_ptr()


def test_hooks_on_the_layers_modules_still_run(block_kernels):
    layer = make_layer(32, 2)
    x = torch.randn(2, 9, 32, requires_grad=True)
    cos, sin = rotary_tables(9, 4, 10000.0)
    seen = []
    layer.mlp.dense_4h_to_h.register_forward_hook(lambda m, args, out: seen.append("forward"))
    layer.attention.dense.register_full_backward_hook(lambda m, gin, gout: seen.append("backward"))
    out = layer(x, cos, sin)
    assert type(out.grad_fn).__name__ != "_ParallelBlockBackward"
    out.sum().backward()
    assert seen == ["forward", "backward"]


def test_the_fused_layer_stands_aside_without_a_backward_pass(block_kernels):
    layer = make_layer(32, 2)
    cos, sin = rotary_tables(9, 4, 10000.0)
    x = torch.randn(2, 9, 32)
    assert fused_parallel_block(layer, x.requires_grad_(), cos, sin) is not None
    with torch.no_grad():
        assert fused_parallel_block(layer, x, cos, sin) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_parallel_block(layer, x, cos, sin) is None
    layer.requires_grad_(False)
    assert fused_parallel_block(layer, x.detach(), cos, sin) is None


def test_second_order_gradients_through_the_fused_layer_are_refused(block_kernels):
    layer = make_layer(32, 2)
    cos, sin = rotary_tables(9, 4, 10000.0)
    x = torch.randn(2, 9, 32, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"first-order gradients only"):
        torch.autograd.grad(layer(x, cos, sin).square().sum(), x, create_graph=True)


def test_input_gradients_through_a_frozen_fused_layer_match_its_modules(block_kernels):
    # Saliency on a frozen model: only x needs a gradient, and the weights' products are skipped.
    layer = make_layer(32, 2).requires_grad_(False)
    reference = copy.deepcopy(layer).double()
    x, grad = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    cos, sin = rotary_tables(9, 4, 10000.0)
    out, dx, grads = run(layer, x, cos, sin, grad)
    assert type(out.grad_fn).__name__ == "_ParallelBlockBackward"
    assert all(g is None for g in grads.values())
    with cpu_kernels.disabled():
        _, dx_ref, _ = run(reference, x.double(), cos.double(), sin.double(), grad.double())
    torch.testing.assert_close(dx.double(), dx_ref, atol=1e-5, rtol=1e-4)
