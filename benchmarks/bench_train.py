"""Training tokens/s of lmsuite's trainer against transformers' GPTNeoXForCausalLM.

Same shape, batch, data and optimizer (AdamW with GPT-NeoX's weight-decay groups, clipping
1.0) for every size of a suite. Each implementation runs in its own process:
- "lmsuite": lmsuite's model and optimizer, with the trainer's runtime settings
  (`keep_freed_memory`, fused AdamW);
- "transformers": GPTNeoXForCausalLM in a plain PyTorch loop (foreach AdamW), as users run it;
- "transformers+alloc": the same, given lmsuite's allocator setting too, to show how much
  of the difference that setting alone makes.
Also measures this machine's fp32 matmul rate and the share of it lmsuite reaches.
Prints one JSON line per size, then a summary line.
"""

import argparse
import json
import subprocess
import sys
import time

import torch

IMPLEMENTATIONS = ("lmsuite", "transformers", "transformers+alloc")


def matmul_gflops(n: int = 1024, seconds: float = 2.0) -> float:
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


def tokens_per_s(step, batches, seconds: float, rounds: int = 5) -> float:
    """The best of `rounds` timed rounds (this machine's other load only ever slows a round)."""
    for i in range(3):
        step(batches[i % len(batches)])
    best = 0.0
    for _ in range(rounds):
        start, count, tokens = time.perf_counter(), 0, 0
        while time.perf_counter() - start < seconds / rounds:
            batch = batches[count % len(batches)]
            step(batch)
            count += 1
            tokens += batch.shape[0] * (batch.shape[1] - 1)
        best = max(best, tokens / (time.perf_counter() - start))
    return best


def worker(impl: str, config: str, seconds: float) -> None:
    """Measure one implementation on every size; print {model: tokens/s} as JSON."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from lmsuite.config import load_suite
    from lmsuite.model.hf import hf_config
    from lmsuite.model.neox import GPTNeoX, config_for_size
    from lmsuite.train.allocator import keep_freed_memory
    from lmsuite.train.trainer import make_optimizer

    if impl in ("lmsuite", "transformers+alloc"):
        keep_freed_memory()
    suite = load_suite(config)
    b, length = suite.train.micro_batch_size, suite.data.seq_len + 1
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, suite.data.vocab_size, (b, length), generator=gen)
               for _ in range(8)]
    rates = {}
    for size in suite.models:
        cfg = config_for_size(size, suite.data.vocab_size, suite.data.seq_len)
        if impl == "lmsuite":
            model = GPTNeoX(cfg)
            model.init_weights(0)
            optimizer = make_optimizer(model, size, suite, fused=True)

            def loss_of(batch, model=model):
                return model(batch[:, :-1], labels=batch[:, 1:])[1]
        else:
            keys = {k: v for k, v in hf_config(cfg).items()
                    if k not in ("architectures", "model_type")}
            model = GPTNeoXForCausalLM(GPTNeoXConfig(**keys))
            optimizer = make_optimizer(model, size, suite, fused=False)

            def loss_of(batch, model=model):  # transformers shifts the labels itself
                return model(input_ids=batch, labels=batch).loss

        def step(batch, model=model, optimizer=optimizer, loss_of=loss_of):
            loss_of(batch).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        rates[size.name] = tokens_per_s(step, batches, seconds)
    print(json.dumps(rates))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.toml")
    parser.add_argument("--seconds", type=float, default=10.0, help="per size and implementation")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.config, args.seconds)
        return
    from lmsuite.config import load_suite
    from lmsuite.model.neox import config_for_size

    rates = {}
    for impl in IMPLEMENTATIONS:
        out = subprocess.run([sys.executable, __file__, args.config, "--seconds",
                              str(args.seconds), "--worker", impl],
                             check=True, capture_output=True, text=True).stdout
        rates[impl] = json.loads(out.strip().splitlines()[-1])
    peak = matmul_gflops()
    suite = load_suite(args.config)
    speedups = {}
    for size in suite.models:
        cfg = config_for_size(size, suite.data.vocab_size, suite.data.seq_len)
        ours, hf, hf_alloc = (rates[i][size.name] for i in IMPLEMENTATIONS)
        achieved = ours * flops_per_token(cfg, suite.data.seq_len) / 1e9
        speedups[size.name] = round(ours / hf, 2)
        print(json.dumps({
            "benchmark": "train", "model": size.name, "d_model": cfg.d_model,
            "layers": cfg.layers, "batch": [suite.train.micro_batch_size, suite.data.seq_len],
            "lmsuite_tokens_per_s": round(ours), "transformers_tokens_per_s": round(hf),
            "transformers_alloc_tokens_per_s": round(hf_alloc),
            "speedup": round(ours / hf, 2), "speedup_same_allocator": round(ours / hf_alloc, 2),
            "achieved_gflops": round(achieved, 1),
            "share_of_matmul_peak": round(achieved / peak, 3),
        }))
    print(json.dumps({"benchmark": "train_summary", "threads": torch.get_num_threads(),
                      "matmul_fp32_gflops": round(peak, 1), "speedups": speedups}))


if __name__ == "__main__":
    main()
