"""The model with the kernels attached (`accel.install`) against the model as written."""

import copy
import warnings

import pytest
import torch

from lmsuite import accel
from lmsuite.accel.kernels import MAX_SEQ
from lmsuite.accel.layer import FastGPTNeoX, FastNeoXLayer
from lmsuite.model.neox import GPTNeoX, NeoXConfig, NeoXLayer, rotary_tables
from tests.accel.conftest import installed_model

SMALL = NeoXConfig(vocab_size=256, layers=2, d_model=64, heads=4)


def make_layer(d_model: int, heads: int, seed: int = 0) -> NeoXLayer:
    """A fast layer whose every parameter is random, so that a gradient mixed up between two
    parameters of the same shape shows."""
    layer = NeoXLayer(NeoXConfig(vocab_size=64, layers=1, d_model=d_model, heads=heads))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim == 1 else 0.1))
    layer.__class__ = FastNeoXLayer
    return layer


def as_written(layer: NeoXLayer) -> NeoXLayer:
    """A float64 copy of the layer that runs neox's code."""
    plain = copy.deepcopy(layer).double()
    plain.__class__ = NeoXLayer
    return plain


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
def test_the_fast_layer_matches_its_modules_forward_and_backward(kernels, batch, seq,
                                                                 d_model, heads):
    layer = make_layer(d_model, heads)
    reference = as_written(layer)
    gen = torch.Generator().manual_seed(seq)
    x = torch.randn(batch, seq, d_model, generator=gen)
    grad = torch.randn(batch, seq, d_model, generator=gen)
    cos, sin = rotary_tables(seq, layer.attention.head_dim // 4, 10000.0)

    out, dx, grads = run(layer, x, cos, sin, grad)
    assert type(out.grad_fn).__name__ == "_ParallelBlockBackward"
    out_ref, dx_ref, grads_ref = run(reference, x.double(), cos.double(), sin.double(),
                                     grad.double())
    torch.testing.assert_close(out.double(), out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx.double(), dx_ref, atol=1e-5, rtol=1e-4)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name].double(), g, atol=1e-5, rtol=1e-4, msg=name)
    # the two output biases get equal gradients, in tensors of their own
    dense_bias, down_bias = grads["attention.dense.bias"], grads["mlp.dense_4h_to_h.bias"]
    assert torch.equal(dense_bias, down_bias)
    assert dense_bias.data_ptr() != down_bias.data_ptr()


def test_without_a_backward_pass_the_fast_layer_runs_the_kernels_and_keeps_nothing(kernels):
    layer = make_layer(32, 2)
    cos, sin = rotary_tables(9, 4, 10000.0)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        out = layer(x, cos, sin)
        with accel.disabled():
            plain = layer(x, cos, sin)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    assert not torch.equal(out, plain)  # the kernels ran: they round differently


def test_the_fast_layer_stands_aside_where_the_kernels_do_not_apply(kernels):
    layer = make_layer(32, 2)
    cos, sin = rotary_tables(9, 4, 10000.0)
    x = torch.randn(2, 9, 32, requires_grad=True)
    assert type(layer(x, cos, sin).grad_fn).__name__ == "_ParallelBlockBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(layer(x, cos, sin).grad_fn).__name__ != "_ParallelBlockBackward"
    with accel.disabled():
        assert type(layer(x, cos, sin).grad_fn).__name__ != "_ParallelBlockBackward"
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool).tril()
    assert type(layer(x, cos, sin, mask).grad_fn).__name__ != "_ParallelBlockBackward"
    long_cos, long_sin = rotary_tables(MAX_SEQ + 1, 4, 10000.0)
    long = layer(torch.randn(1, MAX_SEQ + 1, 32, requires_grad=True), long_cos, long_sin)
    assert type(long.grad_fn).__name__ != "_ParallelBlockBackward"
    double = copy.deepcopy(layer).double()
    out = double(x.double(), cos.double(), sin.double())
    assert out.dtype == torch.float64


def test_hooks_on_the_layers_modules_still_run(kernels):
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


def test_second_order_gradients_through_the_fast_layer_are_refused(kernels):
    layer = make_layer(32, 2)
    cos, sin = rotary_tables(9, 4, 10000.0)
    x = torch.randn(2, 9, 32, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"first-order gradients only.*disabled\(\)"):
        torch.autograd.grad(layer(x, cos, sin).square().sum(), x, create_graph=True)
    assert torch.autograd.grad(layer(x, cos, sin).square().sum(), x)[0] is not None


def test_input_gradients_through_a_frozen_fast_layer_match_its_modules(kernels):
    # Saliency on a frozen model: only x needs a gradient, and the weights' products are skipped.
    layer = make_layer(32, 2).requires_grad_(False)
    reference = as_written(layer)
    x, grad = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    cos, sin = rotary_tables(9, 4, 10000.0)
    out, dx, grads = run(layer, x, cos, sin, grad)
    assert type(out.grad_fn).__name__ == "_ParallelBlockBackward"
    assert all(g is None for g in grads.values())
    _, dx_ref, _ = run(reference, x.double(), cos.double(), sin.double(), grad.double())
    torch.testing.assert_close(dx.double(), dx_ref, atol=1e-5, rtol=1e-4)


def outputs(model, tokens):
    logits, loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    loss.backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_install_attaches_every_kernel_and_the_model_agrees_with_the_plain_one(kernels):
    fast, plain = installed_model(SMALL)
    assert type(fast) is FastGPTNeoX
    assert all(type(layer) is FastNeoXLayer for layer in fast.gpt_neox.layers)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    tokens = torch.randint(0, 256, (3, 41), generator=torch.Generator().manual_seed(1))
    got, want = outputs(fast, tokens), outputs(plain, tokens)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    for name, g in want[1].items():
        torch.testing.assert_close(got[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cfg, attached", [
    (NeoXConfig(vocab_size=64, layers=1, d_model=24, heads=2), ["cross_entropy"]),  # head 12
    (NeoXConfig(vocab_size=64, layers=1, d_model=36, heads=3), ["cross_entropy"]),  # width 36
    (NeoXConfig(vocab_size=64, layers=1, d_model=32, heads=2, parallel_residual=False),
     ["cross_entropy"]),
    (NeoXConfig(vocab_size=64, layers=1, d_model=32, heads=2, activation="gelu_tanh"),
     ["cross_entropy"]),
])
def test_install_attaches_only_the_kernels_that_fit_the_shape(kernels, cfg, attached):
    model = GPTNeoX(cfg)
    assert accel.install(model) == attached
    assert all(type(layer) is NeoXLayer for layer in model.gpt_neox.layers)


def test_install_leaves_a_model_of_another_dtype_or_with_the_kernels_turned_off(kernels,
                                                                                monkeypatch):
    assert accel.install(GPTNeoX(SMALL).double()) == []
    monkeypatch.setenv("LMSUITE_CPU_KERNELS", "0")
    model = GPTNeoX(SMALL)
    assert accel.install(model) == [] and type(model) is GPTNeoX


def test_a_hook_on_a_layer_norm_still_runs_in_an_installed_model(kernels):
    model, _ = installed_model(NeoXConfig(vocab_size=64, layers=1, d_model=16, heads=1))
    seen = []
    norm = model.gpt_neox.layers[0].post_attention_layernorm
    norm.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    model(torch.randint(0, 64, (2, 5)))
    assert seen == [torch.Size([2, 5, 16])]


def test_torch_compile_traces_an_installed_model_whole_on_pytorchs_operations(kernels):
    # The compiler cannot see into a kernel: traced, the model uses PyTorch's operations, so
    # it compiles as one graph (a kernel call would break it, and `fullgraph` would raise).
    torch._dynamo.reset()
    model, _ = installed_model(SMALL)
    tokens = torch.randint(0, 256, (3, 41), generator=torch.Generator().manual_seed(2))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    logits, loss = compiled(tokens[:, :-1], labels=tokens[:, 1:])
    eager_logits, eager_loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, eager_loss, atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


def test_per_example_gradients_with_torch_func_match_the_kernels_backward(kernels):
    # torch.func's transforms need PyTorch's operations; the kernels stand aside under them.
    from torch.func import functional_call, grad, vmap

    model, _ = installed_model(SMALL)
    tokens = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(3))
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss_of(p, sample):
        return functional_call(model, p, (sample[None, :-1],), {"labels": sample[None, 1:]})[1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's note on attention's missing batching rule
        per_example = vmap(grad(loss_of), in_dims=(None, 0))(params, tokens)
    for i in range(len(tokens)):
        model.zero_grad()
        model(tokens[i:i + 1, :-1], labels=tokens[i:i + 1, 1:])[1].backward()  # the kernels
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_example[name][i], p.grad, atol=1e-5, rtol=1e-4,
                                       msg=name)


def kernel_output(name):
    """(inputs that want a gradient, the output) of the fast layer or the model's loss."""
    gen = torch.Generator().manual_seed(4)
    if name == "layer":
        layer = make_layer(16, 2)
        x = torch.randn(2, 9, 16, generator=gen, requires_grad=True)
        cos, sin = rotary_tables(9, 2, 10000.0)
        return [x, layer.attention.query_key_value.weight, layer.input_layernorm.bias], \
            layer(x, cos, sin)
    model, _ = installed_model(NeoXConfig(vocab_size=64, layers=1, d_model=16, heads=1))
    logits = torch.randn(5, 64, generator=gen, requires_grad=True)
    return [logits], model.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 4]))


@pytest.mark.parametrize("name", ["layer", "cross_entropy"])
def test_batched_gradients_through_the_kernels_equal_one_at_a_time(kernels, name):
    # `torch.autograd.grad(..., is_grads_batched=True)`, which
    # `torch.autograd.functional.jacobian(..., vectorize=True)` uses, hands a kernel's backward
    # pass a batch of gradients that has no memory of its own for the kernel to read.
    inputs, out = kernel_output(name)
    gen = torch.Generator().manual_seed(5)
    vectors = torch.randn(3, *out.shape, generator=gen)
    batched = torch.autograd.grad(out, inputs, vectors, is_grads_batched=True)
    for i in range(3):
        inputs, out = kernel_output(name)  # a new graph: the cross-entropy's runs backward once
        one = torch.autograd.grad(out, inputs, vectors[i])
        for b, o in zip(batched, one, strict=True):
            torch.testing.assert_close(b[i], o, atol=1e-6, rtol=1e-5)


def test_a_vectorized_jacobian_through_an_installed_model_matches_pytorchs_operations(kernels):
    from torch.func import functional_call

    model, plain = installed_model(SMALL)
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(6))
    name = "gpt_neox.layers.0.attention.query_key_value.weight"

    def logits_of(net):  # the first 8 logits at the last position, as a function of one weight
        return lambda w: functional_call(net, {name: w}, (tokens,))[:, -1, :8]

    w = dict(model.named_parameters())[name].detach()
    through_kernels = torch.autograd.functional.jacobian(logits_of(model), w, vectorize=True)
    expected = torch.autograd.functional.jacobian(logits_of(plain), w, vectorize=True)
    assert through_kernels.abs().max() > 0
    torch.testing.assert_close(through_kernels, expected, atol=1e-5, rtol=1e-4)


def test_second_order_gradients_through_the_loss_kernel_are_refused(kernels):
    inputs, out = kernel_output("cross_entropy")
    with pytest.raises(RuntimeError, match=r"first-order gradients only.*disabled\(\)"):
        torch.autograd.grad(out, inputs, create_graph=True)
