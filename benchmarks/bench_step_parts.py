"""Where a training step of lmsuite's model spends its time, per size of a suite.

Times, interleaved so that the machine's drift hits each alike (median of the rounds):
- the trunk (embedding, layers, final LayerNorm) forward, and forward + backward;
- the same plus the output layer (full-vocabulary logits), forward + backward;
- the same plus the cross-entropy, forward + backward;
- the whole step (with clipping and the fused AdamW update);
- the whole step with lmsuite's CPU kernels (rotary + attention, cross-entropy, GELU, the
  LayerNorm pair) off, as PyTorch's operations do it: `cpu_kernels_speedup` is what the
  kernels are worth;
- the whole step with GELU costing nothing (replaced by the identity): a bound on what a fused
  kernel for it could save.
Differences give each part's cost. `matmul_floor_ms` is how long the step's arithmetic
(bench_train's FLOP count) would take at this machine's fp32 rate for 1024^3 products,
timed in the same rounds: what is left above it is the cost of everything but matrix
products. Also times the elementwise `exp` per element (one thread),
which PyTorch's log-softmax over the vocabulary and attention softmax pay for every logit.
Prints one JSON line per size, then one for `exp`.
"""

import argparse  # noqa: I001  (lmsuite before torch, as its commands import them: lmsuite/blas.py)
import json
import statistics
import time
from contextlib import contextmanager
from types import SimpleNamespace

import lmsuite  # noqa: F401
import torch
from bench_train import flops_per_token

from lmsuite.allocator import keep_freed_memory
from lmsuite.config import load_suite
from lmsuite.model import cpu_kernels, neox
from lmsuite.model.neox import GPTNeoX, config_for_size, rotary_tables
from lmsuite.train.trainer import make_optimizer


@contextmanager
def free_gelu():
    """Within: lmsuite's model skips GELU (wrong numbers, same shapes), so a step costs what it
    would if GELU cost nothing."""
    saved_f, saved_fused = neox.F, neox.fused_gelu
    neox.F = SimpleNamespace(**{k: getattr(saved_f, k) for k in dir(saved_f)
                                if not k.startswith("__")})
    neox.F.gelu = lambda x, approximate="none": x
    neox.fused_gelu = lambda x: x
    try:
        yield
    finally:
        neox.F, neox.fused_gelu = saved_f, saved_fused


def parts(suite, name: str, rounds: int) -> dict:
    size = suite.model(name)
    cfg = config_for_size(size, suite.data.vocab_size, suite.data.seq_len)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, suite.data.vocab_size,
                          (suite.train.micro_batch_size, suite.data.seq_len + 1), generator=gen)
    inputs, labels = batch[:, :-1], batch[:, 1:]
    model, free_model = GPTNeoX(cfg), GPTNeoX(cfg)  # the second trains on wrong numbers
    model.init_weights(0)
    free_model.init_weights(0)
    optimizer = make_optimizer(model, size, suite, fused=True)
    free_optimizer = make_optimizer(free_model, size, suite, fused=True)

    def trunk():
        x = model.gpt_neox.embed_in(inputs)
        cos, sin = rotary_tables(inputs.shape[1], cfg.rotary_dims, cfg.rotary_base)
        for layer in model.gpt_neox.layers:
            x = layer(x, cos, sin)
        return model.gpt_neox.final_layer_norm(x)

    def trunk_forward():
        with torch.no_grad():
            trunk()

    def backward(out):
        out.backward()
        model.zero_grad(set_to_none=True)

    def step(model=model, optimizer=optimizer):
        model(inputs, labels=labels)[1].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step_free():
        with free_gelu():
            step(free_model, free_optimizer)

    def step_without_kernels():
        with cpu_kernels.disabled():
            step()

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    runs = {
        "matmul": lambda: a @ b,
        "trunk_forward": trunk_forward,
        "trunk": lambda: backward(trunk().sum()),
        "logits": lambda: backward(model.embed_out(trunk()).sum()),
        "loss": lambda: backward(model(inputs, labels=labels)[1]),
        "step": step,
        "step_without_kernels": step_without_kernels,
        "step_free": step_free,
    }
    times = {k: [] for k in runs}
    for _ in range(3):
        for run in runs.values():
            run()
    for _ in range(rounds):
        for k, run in runs.items():
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    flops = flops_per_token(cfg, suite.data.seq_len) * inputs.numel()
    peak_gflops = 2 * 1024**3 / ms["matmul"] / 1e6
    return {
        "benchmark": "step_parts", "model": name, "d_model": cfg.d_model, "layers": cfg.layers,
        "batch": [suite.train.micro_batch_size, suite.data.seq_len], "rounds": rounds,
        "matmul_fp32_gflops": round(peak_gflops, 1),
        "step_ms": round(ms["step"], 1),
        "matmul_floor_ms": round(flops / peak_gflops / 1e6, 1),
        "trunk_forward_ms": round(ms["trunk_forward"], 1),
        "trunk_backward_ms": round(ms["trunk"] - ms["trunk_forward"], 1),
        "output_layer_ms": round(ms["logits"] - ms["trunk"], 1),
        "cross_entropy_ms": round(ms["loss"] - ms["logits"], 1),
        "clip_and_optimizer_ms": round(ms["step"] - ms["loss"], 1),
        "step_without_cpu_kernels_ms": round(ms["step_without_kernels"], 1),
        "cpu_kernels_speedup": round(ms["step_without_kernels"] / ms["step"], 2),
        "step_free_gelu_ms": round(ms["step_free"], 1),
        "bound_on_fusing_gelu": round(ms["step"] / ms["step_free"], 2),
    }


def exp_ns_per_element(n: int = 1 << 16) -> float:
    torch.set_num_threads(1)
    x, y = torch.randn(n), torch.empty(n)
    for _ in range(10):
        torch.exp(x, out=y)
    reps = 300
    start = time.perf_counter()
    for _ in range(reps):
        torch.exp(x, out=y)
    return (time.perf_counter() - start) / reps / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.toml")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--models", help="comma-separated sizes (default: all)")
    args = parser.parse_args()
    keep_freed_memory()
    torch.use_deterministic_algorithms(True)
    suite = load_suite(args.config)
    names = args.models.split(",") if args.models else suite.model_names()
    for name in names:
        print(json.dumps(parts(suite, name, args.rounds)), flush=True)
    print(json.dumps({"benchmark": "exp", "threads": 1, "elements": 1 << 16,
                      "ns_per_element": round(exp_ns_per_element(), 2)}))


if __name__ == "__main__":
    main()
