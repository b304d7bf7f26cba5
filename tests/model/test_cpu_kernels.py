import warnings

import pytest
import torch
import torch.nn.functional as F

from lmsuite.model import cpu_kernels
from lmsuite.model.cpu_kernels import (
    MAX_SEQ,
    fused_attention,
    fused_cross_entropy,
    fused_gelu,
    fused_layer_norm_pair,
)
from lmsuite.model.kernel_build import (
    cross_entropy_library,
    gelu_library,
    layer_norm_library,
)
from lmsuite.model.neox import GPTNeoX, NeoXConfig, apply_rotary, rotary_tables


@pytest.fixture(scope="module")
def ce_kernel():
    if cross_entropy_library() is None:
        pytest.skip("the CPU cross-entropy kernel cannot be built here (no C compiler or OpenMP)")


@pytest.fixture(scope="module")
def gelu_kernel():
    if gelu_library() is None:
        pytest.skip("the CPU GELU kernel cannot be built here (no C compiler or OpenMP)")


@pytest.fixture(scope="module")
def ln_kernel():
    if layer_norm_library() is None:
        pytest.skip("the CPU LayerNorm kernel cannot be built here (no C compiler or OpenMP)")


def reference_attention(qkv, cos, sin, heads, dtype=torch.float64):
    """Rotary + causal attention the plain way, in float64 unless told otherwise."""
    qkv, cos, sin = qkv.to(dtype), cos.to(dtype), sin.to(dtype)
    b, t, width = qkv.shape
    hd = width // (3 * heads)
    q, k, v = qkv.view(b, t, heads, 3 * hd).transpose(1, 2).split(hd, dim=-1)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(b, t, heads * hd)


@pytest.mark.parametrize("batch, seq, heads, head_dim, rotary_dims", [
    (3, 37, 2, 8, 2),     # sequence not a multiple of 8
    (2, 64, 3, 16, 4),    # the tiny suite's heads
    (2, 21, 2, 24, 3),    # odd rotary width (rounded up to 4, as HF does); 3 vectors a row
    (1, 128, 1, 32, 32),  # rotary on the whole head
    (2, 9, 4, 16, 0),     # no rotary
    (1, 1, 2, 8, 2),      # a single token
    (2, 33, 2, 64, 16),   # Pythia's 64-wide heads
])
def test_fused_attention_matches_rotary_plus_sdpa_forward_and_backward(
        kernels, batch, seq, heads, head_dim, rotary_dims):
    gen = torch.Generator().manual_seed(seq)
    qkv = torch.randn(batch, seq, 3 * heads * head_dim, generator=gen) * 2
    cos, sin = rotary_tables(seq, rotary_dims, 10000.0)
    grad = torch.randn(batch, seq, heads * head_dim, generator=gen)

    x = qkv.clone().requires_grad_()
    y = fused_attention(x, cos, sin, heads)
    assert y is not None
    y.backward(grad)
    x_ref = qkv.double().requires_grad_()
    y_ref = reference_attention(x_ref, cos, sin, heads)
    y_ref.backward(grad.double())
    x32 = qkv.clone().requires_grad_()  # PyTorch's own float32 path, for the rounding to expect
    y32 = reference_attention(x32, cos, sin, heads, dtype=torch.float32)
    y32.backward(grad)

    def error(a, b):
        return (a.double() - b).abs().max().item()

    assert error(y, y_ref) <= 3 * error(y32, y_ref) + 1e-6
    assert error(x.grad, x_ref.grad) <= 3 * error(x32.grad, x_ref.grad) + 1e-6
    torch.testing.assert_close(y.double(), y_ref.detach(), atol=1e-5, rtol=1e-5)


def at_one_and_three_threads(run):
    """run()'s tensors with PyTorch's pool at 1 thread and at 3."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    return results


def test_fused_attention_does_not_depend_on_the_thread_count(kernels):
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(4, 50, 3 * 3 * 16, generator=gen)
    cos, sin = rotary_tables(50, 4, 10000.0)
    grad = torch.randn(4, 50, 3 * 16, generator=gen)

    def run():
        x = qkv.clone().requires_grad_()
        y = fused_attention(x, cos, sin, 3)
        y.backward(grad)
        return y.detach(), x.grad

    for one, three in zip(*at_one_and_three_threads(run), strict=True):
        assert torch.equal(one, three)


def test_fused_attention_without_a_backward_pass_keeps_no_probabilities(kernels):
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(3, 45, 3 * 2 * 16, generator=gen).requires_grad_()
    cos, sin = rotary_tables(45, 4, 10000.0)
    with_grad = fused_attention(qkv, cos, sin, 2)
    with torch.no_grad():
        without = fused_attention(qkv, cos, sin, 2)
    assert without.grad_fn is None
    assert torch.equal(with_grad.detach(), without)  # the same arithmetic, bit for bit


def test_fused_attention_declines_what_it_does_not_do(kernels):
    cos, sin = rotary_tables(8, 2, 10000.0)
    assert fused_attention(torch.randn(1, 8, 3 * 2 * 12), cos, sin, 2) is None  # head 12
    assert fused_attention(torch.randn(1, 8, 3 * 16, dtype=torch.float64),
                           cos.double(), sin.double(), 1) is None
    long_cos, long_sin = rotary_tables(MAX_SEQ + 1, 4, 10000.0)
    assert fused_attention(torch.randn(1, MAX_SEQ + 1, 3 * 16), long_cos, long_sin, 1) is None


def model_outputs(cfg, tokens):
    model = GPTNeoX(cfg)
    model.init_weights(0)
    logits, loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    loss.backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_model_with_and_without_the_kernels_agree(kernels, ce_kernel, gelu_kernel,
                                                   ln_kernel):
    cfg = NeoXConfig(vocab_size=256, layers=2, d_model=64, heads=4)
    tokens = torch.randint(0, 256, (3, 41), generator=torch.Generator().manual_seed(1))
    fused = model_outputs(cfg, tokens)
    with cpu_kernels.disabled():
        plain = model_outputs(cfg, tokens)
    torch.testing.assert_close(fused[0], plain[0], atol=1e-5, rtol=1e-5)
    for name, g in plain[1].items():
        torch.testing.assert_close(fused[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("rows, classes", [(64, 2048), (33, 1003), (5, 7), (3, 50304)])
def test_fused_cross_entropy_matches_pytorch(ce_kernel, rows, classes):
    gen = torch.Generator().manual_seed(classes)
    logits = torch.randn(rows, classes, generator=gen) * 4
    logits[0, :3] = 60.0  # large logits: the max is subtracted before exp
    labels = torch.randint(0, classes, (rows,), generator=gen)
    labels[1] = -100
    x = logits.clone().requires_grad_()
    loss = fused_cross_entropy(x, labels)
    (loss * 3).backward()
    x_ref = logits.clone().requires_grad_()
    ref = F.cross_entropy(x_ref, labels, ignore_index=-100)
    (ref * 3).backward()
    torch.testing.assert_close(loss, ref.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-7, rtol=1e-5)
    assert torch.all(x.grad[1] == 0)  # the ignored row


def test_fused_cross_entropy_edge_cases(ce_kernel):
    logits = torch.randn(4, 10)
    assert torch.isnan(fused_cross_entropy(logits, torch.full((4,), -100)))  # as PyTorch
    with pytest.raises(IndexError, match="label 10 at row 2 is out of range for 10 classes"):
        fused_cross_entropy(logits, torch.tensor([1, 2, 10, 3]))
    assert fused_cross_entropy(logits.double(), torch.tensor([1, 2, 3, 4])) is None


def test_fused_cross_entropy_backpropagates_again_with_retain_graph(ce_kernel):
    # Its first backward pass hands out the gradient it kept, scaled in place; later ones
    # (retain_graph) rescale that, and refuse if someone has changed it in place since.
    logits, labels = torch.randn(6, 10), torch.tensor([1, 2, 3, 4, 5, -100])
    x = logits.clone().requires_grad_()
    loss = fused_cross_entropy(x, labels)
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


def test_fused_cross_entropy_frees_its_saved_gradient_after_the_backward_pass(ce_kernel):
    # Training keeps `loss` for logging after backward(); the logits-sized gradient the kernel
    # kept must not stay alive with it.
    import weakref

    kept = []

    def pack(t):
        kept.append(weakref.ref(t))
        return t

    x = torch.randn(6, 10, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fused_cross_entropy(x * 2, torch.tensor([1, 2, 3, 4, 5, 6]))
    assert kept and all(ref() is not None for ref in kept)
    loss.backward()
    assert loss.grad_fn is not None and all(ref() is None for ref in kept)


@pytest.mark.parametrize("shape", [(3, 7, 11), (2048, 64), (5,)])
def test_fused_gelu_matches_exact_gelu(gelu_kernel, shape):
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen) * 3
    x.view(-1)[:4] = torch.tensor([0.0, -12.0, 12.0, -0.5])[: x.numel()]
    grad = torch.randn(shape, generator=gen)
    a = x.clone().requires_grad_()
    y = fused_gelu(a)
    y.backward(grad, retain_graph=True)
    b = x.double().requires_grad_()
    ref = F.gelu(b)  # float64: erf to double precision
    ref.backward(grad.double())
    torch.testing.assert_close(y.double(), ref.detach(), atol=4e-7, rtol=1e-6)
    torch.testing.assert_close(a.grad.double(), b.grad, atol=4e-7, rtol=1e-6)
    first = a.grad.clone()
    y.backward(grad)  # the kept derivative is not used up
    torch.testing.assert_close(a.grad, 2 * first)
    with torch.no_grad():  # no derivative kept: the same values
        assert torch.equal(fused_gelu(x), y.detach())


def layer_norms(width, seed, eps=1e-5):
    gen = torch.Generator().manual_seed(seed)
    pair = torch.nn.LayerNorm(width, eps=eps), torch.nn.LayerNorm(width, eps=eps)
    with torch.no_grad():
        for ln in pair:
            ln.weight.copy_(torch.randn(width, generator=gen))
            ln.bias.copy_(torch.randn(width, generator=gen))
    return pair


@pytest.mark.parametrize("shape", [(3, 5, 16), (130, 64), (2, 64, 160), (1, 8)])
def test_fused_layer_norm_pair_matches_two_layer_norms(ln_kernel, shape):
    # rows not a multiple of the kernel's 64-row chunks, a single row, the tiny suite's widths
    first, second = layer_norms(shape[-1], len(shape))
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen) * 3 + 1).requires_grad_()
    g1, g2 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    y1, y2 = fused_layer_norm_pair(x, first, second)
    params = [x, first.weight, first.bias, second.weight, second.bias]
    grads = torch.autograd.grad((y1 * g1).sum() + (y2 * g2).sum(), params)
    ref = [p.detach().double().requires_grad_() for p in params]
    r1 = F.layer_norm(ref[0], shape[-1:], ref[1], ref[2], first.eps)
    r2 = F.layer_norm(ref[0], shape[-1:], ref[3], ref[4], second.eps)
    ref_grads = torch.autograd.grad((r1 * g1.double()).sum() + (r2 * g2.double()).sum(), ref)
    torch.testing.assert_close(y1.double(), r1.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y2.double(), r2.detach(), atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_fused_layer_norm_pair_does_not_depend_on_the_thread_count(ln_kernel):
    first, second = layer_norms(64, 5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(300, 64, generator=gen)
    g1, g2 = torch.randn(300, 64, generator=gen), torch.randn(300, 64, generator=gen)

    def run():
        a = x.clone().requires_grad_()
        y1, y2 = fused_layer_norm_pair(a, first, second)
        params = [a, first.weight, first.bias, second.weight, second.bias]
        return [y1, y2, *torch.autograd.grad((y1 * g1).sum() + (y2 * g2).sum(), params)]

    for one, three in zip(*at_one_and_three_threads(run), strict=True):
        assert torch.equal(one, three)


def test_fused_layer_norm_pair_declines_what_it_does_not_do(ln_kernel):
    assert fused_layer_norm_pair(torch.randn(4, 12), *layer_norms(12, 0)) is None  # width 12
    mixed = torch.nn.LayerNorm(16, eps=1e-5), torch.nn.LayerNorm(16, eps=1e-6)
    assert fused_layer_norm_pair(torch.randn(4, 16), *mixed) is None
    assert fused_layer_norm_pair(torch.randn(4, 16, dtype=torch.float64),
                                 *layer_norms(16, 0)) is None


def test_a_hook_on_a_layer_norm_still_runs_in_the_model(ln_kernel):
    cfg = NeoXConfig(vocab_size=64, layers=1, d_model=16, heads=1)
    model = GPTNeoX(cfg)
    model.init_weights(0)
    seen = []
    norm = model.gpt_neox.layers[0].post_attention_layernorm
    norm.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    model(torch.randint(0, 64, (2, 5)))
    assert seen == [torch.Size([2, 5, 16])]


def test_torch_compile_traces_the_model_whole_on_pytorchs_operations(kernels, ce_kernel,
                                                                      gelu_kernel, ln_kernel):
    # The compiler cannot see into a kernel: traced, the model uses PyTorch's operations, so
    # it compiles as one graph (a kernel call would break it, and `fullgraph` would raise).
    torch._dynamo.reset()
    cfg = NeoXConfig(vocab_size=256, layers=2, d_model=64, heads=4)
    model = GPTNeoX(cfg)
    model.init_weights(0)
    tokens = torch.randint(0, 256, (3, 41), generator=torch.Generator().manual_seed(2))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    logits, loss = compiled(tokens[:, :-1], labels=tokens[:, 1:])
    eager_logits, eager_loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, eager_loss, atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


def test_per_example_gradients_with_torch_func_match_the_kernels_backward(kernels, ce_kernel,
                                                                          gelu_kernel,
                                                                          ln_kernel):
    # torch.func's transforms need PyTorch's operations; the kernels stand aside under them.
    from torch.func import functional_call, grad, vmap

    cfg = NeoXConfig(vocab_size=256, layers=2, d_model=64, heads=4)
    model = GPTNeoX(cfg)
    model.init_weights(0)
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
    """(inputs that want a gradient, the kernel's output or outputs) for one kernel."""
    gen = torch.Generator().manual_seed(4)
    if name == "attention":
        qkv = torch.randn(2, 9, 2 * 3 * 8, generator=gen, requires_grad=True)
        cos, sin = rotary_tables(9, 2, 10000.0)
        return [qkv], fused_attention(qkv, cos, sin, 2)
    if name == "cross_entropy":
        logits = torch.randn(5, 7, generator=gen, requires_grad=True)
        return [logits], fused_cross_entropy(logits, torch.tensor([0, 1, 2, 3, 4]))
    if name == "gelu":
        x = torch.randn(11, generator=gen, requires_grad=True)
        return [x], fused_gelu(x)
    first, second = layer_norms(8, 0)
    x = torch.randn(3, 8, generator=gen, requires_grad=True)
    return [x, first.weight, second.bias], fused_layer_norm_pair(x, first, second)


def kernel_outputs(name):
    """(inputs that want a gradient, a scalar from the kernel's output) for one kernel."""
    inputs, out = kernel_output(name)
    if name == "layer_norm_pair":
        return inputs, (out[0] * out[1]).sum()
    return inputs, out if name == "cross_entropy" else out.square().sum()


@pytest.mark.parametrize("name", ["attention", "cross_entropy", "gelu", "layer_norm_pair"])
def test_batched_gradients_through_a_kernel_equal_one_at_a_time(kernels, ce_kernel, gelu_kernel,
                                                                  ln_kernel, name):
    # `torch.autograd.grad(..., is_grads_batched=True)`, which
    # `torch.autograd.functional.jacobian(..., vectorize=True)` uses, hands a kernel's backward
    # pass a batch of gradients that has no memory of its own for the kernel to read.
    inputs, out = kernel_output(name)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(5)
    vectors = [torch.randn(3, *o.shape, generator=gen) for o in outs]
    batched = torch.autograd.grad(outs, inputs, vectors, is_grads_batched=True)
    for i in range(3):
        inputs, out = kernel_output(name)  # a new graph: the cross-entropy's runs backward once
        one = torch.autograd.grad(out, inputs, [v[i] for v in vectors])
        for b, o in zip(batched, one, strict=True):
            torch.testing.assert_close(b[i], o, atol=1e-6, rtol=1e-5)


def test_a_vectorized_jacobian_through_the_model_matches_pytorchs_operations(
        kernels, ce_kernel, gelu_kernel, ln_kernel):
    from torch.func import functional_call

    model = GPTNeoX(NeoXConfig(vocab_size=256, layers=2, d_model=64, heads=4))
    model.init_weights(0)
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(6))
    name = "gpt_neox.layers.0.attention.query_key_value.weight"

    def logits(w):  # the first 8 logits at the last position, as a function of one weight
        return functional_call(model, {name: w}, (tokens,))[:, -1, :8]

    w = dict(model.named_parameters())[name].detach()
    through_kernels = torch.autograd.functional.jacobian(logits, w, vectorize=True)
    with cpu_kernels.disabled():
        expected = torch.autograd.functional.jacobian(logits, w, vectorize=True)
    assert through_kernels.abs().max() > 0
    torch.testing.assert_close(through_kernels, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["attention", "cross_entropy", "gelu", "layer_norm_pair"])
def test_second_order_gradients_through_a_kernel_are_refused(kernels, ce_kernel, gelu_kernel,
                                                             ln_kernel, name):
    # A kernel's gradient carries no graph, so a Hessian-vector product through it would be
    # silently wrong: asking for one (create_graph=True) is an error that says what to do.
    inputs, out = kernel_outputs(name)
    with pytest.raises(RuntimeError, match=r"first-order gradients only.*disabled\(\)"):
        torch.autograd.grad(out, inputs, create_graph=True)
    inputs, out = kernel_outputs(name)
    assert all(g is not None for g in torch.autograd.grad(out, inputs))  # first order works
