"""What MKL's tuned products (lmsuite/accel/blas.py) change on this CPU: every matrix product of a
tiny model's training step, timed in processes on MKL's tuned path and on its own choice
(LMSUITE_MKL_TUNED=0), taking turns. One JSON line per product shape, then a summary line with
the time of one step's products (each layer shape counted once per layer) on each path.

    .venv/bin/python benchmarks/bench_mkl.py [--model tiny-7] [--pairs 9]
"""

import argparse
import json
import os
import subprocess
import sys

from common import emit, figure

WORKER = """
import json, sys, time
import lmsuite.accel
lmsuite.accel.configure_process()
import torch
from lmsuite.accel import blas

shapes = json.loads(sys.argv[1])
gen = torch.Generator().manual_seed(0)
out = {"state": blas.state(), "ms": []}
for m, k, n, transposed in shapes:
    a = torch.randn(k, m, generator=gen).t() if transposed else torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    for _ in range(3):
        a @ b
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 0.25:
        a @ b
        count += 1
    out["ms"].append((time.perf_counter() - start) / count * 1e3)
print(json.dumps(out))
"""


def step_shapes(tokens: int, d: int, vocab: int) -> list[tuple[str, int, list]]:
    """(name, uses per step, [m, k, n, a transposed]) of each product in a step's linear
    layers: forward x W^T, input gradient dy W, weight gradient dy^T x."""
    layers = {"qkv": (d, 3 * d), "attention out": (d, d), "mlp in": (d, 4 * d),
              "mlp out": (4 * d, d), "output layer": (d, vocab)}
    shapes = []
    for name, (fan_in, fan_out) in layers.items():
        shapes += [(f"{name} forward", name, [tokens, fan_in, fan_out, False]),
                   (f"{name} input gradient", name, [tokens, fan_out, fan_in, False]),
                   (f"{name} weight gradient", name, [fan_out, tokens, fan_in, True])]
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.toml")
    parser.add_argument("--model", default="tiny-7")
    parser.add_argument("--pairs", type=int, default=9, help="processes per path")
    args = parser.parse_args()
    from lmsuite.config import load_suite

    suite = load_suite(args.config)
    size = suite.model(args.model)
    tokens = suite.train.micro_batch_size * suite.data.seq_len
    shapes = step_shapes(tokens, size.d_model, suite.data.vocab_size)
    argument = json.dumps([s for _, _, s in shapes])
    times = {"tuned": [], "generic": []}
    for _ in range(args.pairs):
        for path, env in (("tuned", {}), ("generic", {"LMSUITE_MKL_TUNED": "0"})):
            proc = subprocess.run([sys.executable, "-c", WORKER, argument], check=True,
                                  capture_output=True, text=True, env={**os.environ, **env})
            result = json.loads(proc.stdout)
            if path == "tuned" and result["state"] != "tuned":
                sys.exit(f"MKL's tuned products do not apply here ({result['state']}): "
                         "see lmsuite/accel/blas.py")
            times[path].append(result["ms"])
    per_step = {"tuned": [0.0] * args.pairs, "generic": [0.0] * args.pairs}
    for i, (name, layer, (m, k, n, _)) in enumerate(shapes):
        uses = 1 if layer == "output layer" else size.layers
        for path in per_step:
            for p in range(args.pairs):
                per_step[path][p] += uses * times[path][p][i]
        tuned = [t[i] for t in times["tuned"]]
        generic = [t[i] for t in times["generic"]]
        emit("mkl", name, {
            "speedup": figure([g / t for g, t in zip(generic, tuned, strict=True)], "x"),
            "tuned_gflops": figure([2 * m * k * n / t / 1e6 for t in tuned], "GFLOP/s", 1),
            "generic_gflops": figure([2 * m * k * n / g / 1e6 for g in generic], "GFLOP/s", 1)},
            m_k_n=[m, k, n], pairs=args.pairs)
    emit("mkl", f"one {args.model} step's products", {
        "speedup": figure([g / t for g, t in zip(per_step["generic"], per_step["tuned"],
                                                 strict=True)], "x"),
        "tuned_ms": figure(per_step["tuned"], "ms", 1),
        "generic_ms": figure(per_step["generic"], "ms", 1)}, pairs=args.pairs)


if __name__ == "__main__":
    main()
