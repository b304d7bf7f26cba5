"""Where a training step of lmsuite's model spends its time, per size of a suite.

Times, interleaved so that the machine's drift hits each alike:
- the trunk (embedding, layers, final LayerNorm) forward, and forward + backward;
- the same plus the output layer (full-vocabulary logits), forward + backward;
- the same plus the cross-entropy, forward + backward;
- the whole step (with clipping and the fused AdamW update);
- the whole step on PyTorch's operations (`accel.disabled()`): `cpu_kernels_speedup` is what
  lmsuite's CPU kernels are worth.
Differences give each part's cost. `matmul_floor_ms` is how long the step's arithmetic
(bench_train's FLOP count) would take at this process's rate for 1024^3 products, timed in
the same rounds: what is left above it is the cost of everything but matrix products.
One result line per size.

    .venv/bin/python benchmarks/bench_step_parts.py [configs/tiny.toml] [--models tiny-7]
"""

import argparse
import time

from common import configure, emit, figure

configure()

import torch  # noqa: E402
from bench_train import flops_per_token  # noqa: E402

from lmsuite import accel  # noqa: E402
from lmsuite.config import load_suite  # noqa: E402
from lmsuite.model.neox import GPTNeoX, config_for_size, rotary_tables  # noqa: E402
from lmsuite.train.trainer import make_optimizer  # noqa: E402


def parts(suite, name: str, rounds: int) -> None:
    size = suite.model(name)
    cfg = config_for_size(size, suite.data.vocab_size, suite.data.seq_len)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, suite.data.vocab_size,
                          (suite.train.micro_batch_size, suite.data.seq_len + 1), generator=gen)
    inputs, labels = batch[:, :-1], batch[:, 1:]
    model = GPTNeoX(cfg)
    model.init_weights(0)
    accel.install(model)
    optimizer = make_optimizer(model, size, suite, fused=True)

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

    def step():
        model(inputs, labels=labels)[1].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step_without_kernels():
        with accel.disabled():
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
    }
    times = {k: [] for k in runs}
    for _ in range(3):
        for run in runs.values():
            run()
    for _ in range(rounds):
        for k, run in runs.items():
            start = time.perf_counter()
            run()
            times[k].append((time.perf_counter() - start) * 1e3)
    flops = flops_per_token(cfg, suite.data.seq_len) * inputs.numel()

    def diff(a: str, b: str) -> list[float]:
        return [x - y for x, y in zip(times[a], times[b], strict=True)]

    emit("step_parts", name, {
        "step_ms": figure(times["step"], "ms", 1),
        "matmul_floor_ms": figure([flops / (2 * 1024**3 / m / 1e3) / 1e6 for m in
                                   times["matmul"]], "ms", 1),
        "trunk_forward_ms": figure(times["trunk_forward"], "ms", 1),
        "trunk_backward_ms": figure(diff("trunk", "trunk_forward"), "ms", 1),
        "output_layer_ms": figure(diff("logits", "trunk"), "ms", 1),
        "cross_entropy_ms": figure(diff("loss", "logits"), "ms", 1),
        "clip_and_optimizer_ms": figure(diff("step", "loss"), "ms", 1),
        "cpu_kernels_speedup": figure([w / s for w, s in zip(
            times["step_without_kernels"], times["step"], strict=True)], "x")},
        d_model=cfg.d_model, layers=cfg.layers, rounds=rounds,
        batch=[suite.train.micro_batch_size, suite.data.seq_len])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.toml")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--models", help="comma-separated sizes (default: all)")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    suite = load_suite(args.config)
    for name in args.models.split(",") if args.models else suite.model_names():
        parts(suite, name, args.rounds)


if __name__ == "__main__":
    main()
