"""lmsuite's CPU attention kernel against rotary + PyTorch's scaled_dot_product_attention, per
head size: forward only (no gradient kept) and forward + backward, the two taking turns in
each round. One JSON line per shape.

    .venv/bin/python benchmarks/bench_attention.py [--rounds 9]
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from lmsuite.allocator import keep_freed_memory
from lmsuite.model.cpu_kernels import fused_attention
from lmsuite.model.neox import apply_rotary, rotary_tables

SHAPES = [(16, 128, 8, 16), (8, 128, 4, 32), (4, 256, 8, 64), (4, 512, 8, 64), (2, 256, 8, 128)]


def pytorch_attention(qkv, cos, sin, heads):
    b, t, _ = qkv.shape
    hd = qkv.shape[2] // (3 * heads)
    q, k, v = qkv.view(b, t, heads, 3 * hd).transpose(1, 2).split(hd, dim=-1)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(b, t, heads * hd)


def timed(fn, args: tuple, grad: torch.Tensor, backward: bool) -> float:
    """Seconds for one call of fn(*args), with its backward pass or without a gradient kept."""
    start = time.perf_counter()
    if backward:
        fn(*args).backward(grad)
        args[0].grad = None
    else:
        with torch.no_grad():
            fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    options = parser.parse_args()
    keep_freed_memory()
    for batch, seq, heads, hd in SHAPES:
        cos, sin = rotary_tables(seq, hd // 4, 10000.0)
        qkv = torch.randn(batch, seq, 3 * heads * hd, requires_grad=True)
        grad = torch.randn(batch, seq, heads * hd)
        args = (qkv, cos, sin, heads)
        if fused_attention(*args) is None:
            raise SystemExit("the attention kernel cannot be built here")

        row = {"benchmark": "attention", "batch": batch, "seq": seq, "heads": heads,
               "head_dim": hd, "rounds": options.rounds}
        for backward, key in ((False, "forward"), (True, "forward_backward")):
            kernel, plain = [], []
            for _ in range(options.rounds):
                kernel.append(timed(fused_attention, args, grad, backward))
                plain.append(timed(pytorch_attention, args, grad, backward))
            row[f"{key}_kernel_ms"] = round(statistics.median(kernel) * 1e3, 2)
            row[f"{key}_pytorch_ms"] = round(statistics.median(plain) * 1e3, 2)
            row[f"{key}_speedup"] = round(statistics.median(
                p / k for p, k in zip(plain, kernel, strict=True)), 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
