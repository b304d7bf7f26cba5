"""Training tokens/s of lmsuite's trainer against transformers' GPTNeoXForCausalLM.

Same shape, batch, data and optimizer (AdamW with GPT-NeoX's weight-decay groups, clipping
1.0) for every size of a suite. Each implementation lives in its own worker process:
- "lmsuite": lmsuite's model and optimizer, with the trainer's runtime settings
  (`keep_freed_memory`, fused AdamW, deterministic algorithms);
- "transformers": GPTNeoXForCausalLM in a plain PyTorch loop (foreach AdamW), as users run it
  (without lmsuite's runtime settings: MKL's own choice of products, glibc's malloc settings);
- "transformers+runtime": the same with lmsuite's runtime settings (`keep_freed_memory` and,
  on AMD CPUs, MKL's tuned products: lmsuite/blas.py), to show how much of the difference
  those settings alone make.

This machine's speed drifts by tens of percent over minutes, so the workers take turns: each
round times every implementation once on the same size (in a rotating order) while the
others wait, and a speedup is the median over rounds of the ratio within a round.
Also measures this machine's fp32 matmul rate (1024^3 products, timed in every round between
the workers' turns, so that it drifts with them) and the share of it lmsuite reaches.
Prints one JSON line per size, then a summary line.
"""

import argparse  # noqa: I001  (lmsuite before torch, as its commands import them: lmsuite/blas.py)
import json
import os
import statistics
import subprocess
import sys
import time

import lmsuite  # noqa: F401
import torch

IMPLEMENTATIONS = ("lmsuite", "transformers", "transformers+runtime")


def matmul_gflops(n: int = 1024, seconds: float = 0.5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding + output-embedding) parameters, plus
    attention scores and values (QK^T and AV, 2 x 2 x seq x d per layer, x3 with backward)."""
    from lmsuite.model.neox import count_parameters

    dense = count_parameters(cfg, embeddings=False) + cfg.vocab_size * cfg.d_model
    return 6 * dense + 12 * cfg.layers * seq_len * cfg.d_model


def worker(impl: str, config: str) -> None:
    """Serve timing requests: read `<size> <seconds>` lines, answer each with the tokens/s of
    training that size for that long (after warm-up steps the first time)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from lmsuite.allocator import keep_freed_memory
    from lmsuite.config import load_suite
    from lmsuite.model.hf import hf_config
    from lmsuite.model.neox import GPTNeoX, config_for_size
    from lmsuite.train.trainer import make_optimizer

    if impl in ("lmsuite", "transformers+runtime"):
        keep_freed_memory()
    if impl == "lmsuite":
        torch.use_deterministic_algorithms(True)
    suite = load_suite(config)
    b, length = suite.train.micro_batch_size, suite.data.seq_len + 1
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, suite.data.vocab_size, (b, length), generator=gen)
               for _ in range(8)]
    steps = {}

    def build(name: str):
        size = suite.model(name)
        cfg = config_for_size(size, suite.data.vocab_size, suite.data.seq_len)
        if impl == "lmsuite":
            model = GPTNeoX(cfg)
            model.init_weights(0)
            optimizer = make_optimizer(model, size, suite, fused=True)

            def loss_of(batch):
                return model(batch[:, :-1], labels=batch[:, 1:])[1]
        else:
            keys = {k: v for k, v in hf_config(cfg).items()
                    if k not in ("architectures", "model_type")}
            model = GPTNeoXForCausalLM(GPTNeoXConfig(**keys))
            optimizer = make_optimizer(model, size, suite, fused=False)

            def loss_of(batch):
                # The same 128 positions and 128 predicted tokens as lmsuite's step: given
                # `labels` alone, transformers would shift them and train on 129 positions.
                inputs = batch[:, :-1]
                return model(input_ids=inputs, labels=inputs,
                             shift_labels=batch[:, 1:].contiguous()).loss

        def step(batch):
            loss_of(batch).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for i in range(3):
            step(batches[i])
        return step

    print("ready", flush=True)
    for line in sys.stdin:
        name, seconds = line.split()
        if name not in steps:
            steps.clear()  # one model at a time
            steps[name] = build(name)
        start, count, tokens = time.perf_counter(), 0, 0
        while time.perf_counter() - start < float(seconds):
            batch = batches[count % len(batches)]
            steps[name](batch)
            count += 1
            tokens += batch.shape[0] * (batch.shape[1] - 1)
        print(tokens / (time.perf_counter() - start), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.toml")
    parser.add_argument("--rounds", type=int, default=7, help="turns per size")
    parser.add_argument("--seconds", type=float, default=1.5,
                        help="per size, implementation and round")
    parser.add_argument("--models", help="comma-separated sizes (default: all)")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.config)
        return
    from lmsuite.config import load_suite
    from lmsuite.model.neox import config_for_size

    suite = load_suite(args.config)
    names = args.models.split(",") if args.models else suite.model_names()
    for name in names:
        suite.model(name)  # an unknown size fails here, with the sizes there are
    workers = {impl: subprocess.Popen(
        [sys.executable, __file__, args.config, "--worker", impl],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **({"LMSUITE_MKL_TUNED": "0"} if impl == "transformers" else {})})
        for impl in IMPLEMENTATIONS}

    def answer(impl: str) -> str:
        line = workers[impl].stdout.readline().strip()
        if not line:
            sys.exit(f"the {impl} worker stopped; run `{sys.argv[0]} {args.config} --worker "
                     f"{impl}` and type a size and a duration to see why")
        return line

    for impl in IMPLEMENTATIONS:
        answer(impl)  # "ready"

    def measure(impl: str, name: str) -> float:
        workers[impl].stdin.write(f"{name} {args.seconds}\n")
        workers[impl].stdin.flush()
        return float(answer(impl))

    speedups, peaks = {}, []
    for name in names:
        rates = {impl: [] for impl in IMPLEMENTATIONS}
        size_peaks = []
        for r in range(args.rounds):
            order = IMPLEMENTATIONS[r % 3:] + IMPLEMENTATIONS[:r % 3]
            for impl in order:
                rates[impl].append(measure(impl, name))
            size_peaks.append(matmul_gflops())
        peak = statistics.median(size_peaks)
        peaks += size_peaks
        ours, hf, hf_runtime = (rates[i] for i in IMPLEMENTATIONS)
        ratio = [a / b for a, b in zip(ours, hf, strict=True)]
        ratio_runtime = [a / b for a, b in zip(ours, hf_runtime, strict=True)]
        cfg = config_for_size(suite.model(name), suite.data.vocab_size, suite.data.seq_len)
        achieved = statistics.median(ours) * flops_per_token(cfg, suite.data.seq_len) / 1e9
        speedups[name] = round(statistics.median(ratio), 2)
        print(json.dumps({
            "benchmark": "train", "model": name, "d_model": cfg.d_model, "layers": cfg.layers,
            "batch": [suite.train.micro_batch_size, suite.data.seq_len], "rounds": args.rounds,
            "lmsuite_tokens_per_s": round(statistics.median(ours)),
            "transformers_tokens_per_s": round(statistics.median(hf)),
            "transformers_runtime_tokens_per_s": round(statistics.median(hf_runtime)),
            "speedup": round(statistics.median(ratio), 2),
            "speedup_range": [round(min(ratio), 2), round(max(ratio), 2)],
            "speedup_same_runtime": round(statistics.median(ratio_runtime), 2),
            "achieved_gflops": round(achieved, 1),
            "matmul_fp32_gflops": round(peak, 1),
            "share_of_matmul_peak": round(achieved / peak, 3),
        }), flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    print(json.dumps({"benchmark": "train_summary", "threads": torch.get_num_threads(),
                      "matmul_fp32_gflops": round(statistics.median(peaks), 1),
                      "speedups": speedups}))


if __name__ == "__main__":
    main()
