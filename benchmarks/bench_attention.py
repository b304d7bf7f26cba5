"""lmsuite's CPU attention kernel (lmsuite/accel) against rotary + PyTorch's
scaled_dot_product_attention, per head size: forward only (no gradient kept) and forward +
backward, the two taking turns in each round. One result line per shape.

    .venv/bin/python benchmarks/bench_attention.py [--rounds 9]
"""

import argparse
import time

from common import configure, emit, figure

configure()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lmsuite.accel.kernels import attention_backward, attention_forward  # noqa: E402
from lmsuite.accel.libraries import attention_library  # noqa: E402
from lmsuite.model.neox import apply_rotary, rotary_tables  # noqa: E402

SHAPES = [(16, 128, 8, 16), (8, 128, 4, 32), (4, 256, 8, 64), (4, 512, 8, 64), (2, 256, 8, 128)]


def pytorch_attention(qkv, cos, sin, heads, grad, backward):
    b, t, _ = qkv.shape
    hd = qkv.shape[2] // (3 * heads)
    with torch.set_grad_enabled(backward):
        x = qkv.detach().requires_grad_(backward)
        q, k, v = x.view(b, t, heads, 3 * hd).transpose(1, 2).split(hd, dim=-1)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, heads * hd)
        if backward:
            y.backward(grad)


def kernel_attention(qkv, cos, sin, heads, grad, backward):
    lib = attention_library(qkv.shape[2] // (3 * heads))
    y, probs, scale = attention_forward(qkv, cos, sin, heads, backward, lib)
    if backward:
        attention_backward(qkv, cos, sin, y, probs, grad, heads, scale, lib)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return 1e3 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    options = parser.parse_args()
    for batch, seq, heads, hd in SHAPES:
        if attention_library(hd) is None:
            raise SystemExit("the attention kernel cannot be built here")
        cos, sin = rotary_tables(seq, hd // 4, 10000.0)
        qkv = torch.randn(batch, seq, 3 * heads * hd)
        grad = torch.randn(batch, seq, heads * hd)
        figures = {}
        for backward, key in ((False, "forward"), (True, "forward_backward")):
            kernel, plain = [], []
            for _ in range(options.rounds):
                kernel.append(timed(kernel_attention, qkv, cos, sin, heads, grad, backward))
                plain.append(timed(pytorch_attention, qkv, cos, sin, heads, grad, backward))
            figures[f"{key}_speedup"] = figure(
                [p / k for p, k in zip(plain, kernel, strict=True)], "x PyTorch")
            figures[f"{key}_kernel_ms"] = figure(kernel, "ms")
        emit("attention", f"batch {batch}, seq {seq}, {heads} heads of {hd}", figures,
             rounds=options.rounds)


if __name__ == "__main__":
    main()
