"""Training tokens/s of lmsuite's trainer against transformers' GPTNeoXForCausalLM.

Same shape, batch, data and optimizer (AdamW with GPT-NeoX's weight-decay groups, clipping
1.0) for every size of a suite. Each implementation lives in its own worker process:
- "lmsuite": lmsuite's model and optimizer as its trainer runs them: the `lmsuite` command's
  process settings (`accel.configure_process()`), the CPU kernels attached, fused AdamW,
  deterministic algorithms;
- "transformers": GPTNeoXForCausalLM in a plain PyTorch loop (foreach AdamW), as users run it
  (without lmsuite's process settings: MKL's own choice of products, glibc's malloc settings);
- "transformers+runtime": the same with lmsuite's process settings, to show how much of the
  difference those settings alone make;
- with `--before SRC`, "lmsuite@before": lmsuite as another source tree (an earlier commit's
  `src/`) has it, timed in the same rounds, so a change is measured against its own past.

This machine's speed drifts by tens of percent over minutes, so the workers take turns: each
round times every implementation once on the same size (in a rotating order) while the
others wait, and a speedup is the median over rounds of the ratio within a round.
Also measures this machine's fp32 matmul rate (1024^3 products, timed in every round between
the workers' turns, so that it drifts with them) and the share of it lmsuite reaches.
Prints one JSON line per size, then a summary line.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

from common import configure, emit, figure, matmul_gflops

IMPLEMENTATIONS = ("lmsuite", "transformers", "transformers+runtime")
BEFORE = "lmsuite@before"


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding + output-embedding) parameters, plus
    attention scores and values (QK^T and AV, 2 x 2 x seq x d per layer, x3 with backward)."""
    from lmsuite.model.neox import count_parameters

    dense = count_parameters(cfg, embeddings=False) + cfg.vocab_size * cfg.d_model
    return 6 * dense + 12 * cfg.layers * seq_len * cfg.d_model


def worker(impl: str, config: str) -> None:
    """Serve timing requests: read `<size> <seconds>` lines, answer each with the tokens/s of
    training that size for that long (after warm-up steps the first time)."""
    if impl == BEFORE:
        attach = _before_tree_settings()
    else:
        if impl != "transformers":
            configure()
        import lmsuite.accel

        attach = lmsuite.accel.install
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from lmsuite.config import load_suite
    from lmsuite.model.hf import hf_config
    from lmsuite.model.neox import GPTNeoX, config_for_size
    from lmsuite.train.trainer import make_optimizer

    ours = impl in ("lmsuite", BEFORE)
    if ours:
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
        if ours:
            model = GPTNeoX(cfg)
            model.init_weights(0)
            attach(model)
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


def _before_tree_settings():
    """The process settings of an lmsuite tree from before `accel` (its `import lmsuite` set
    them, and its model ran its kernels by itself); returns its way to attach kernels."""
    import lmsuite  # noqa: F401, I001  (that tree's import loads MKL's tuned products)
    from lmsuite.allocator import keep_freed_memory

    keep_freed_memory()
    return lambda model: None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.toml")
    parser.add_argument("--rounds", type=int, default=7, help="turns per size")
    parser.add_argument("--seconds", type=float, default=1.5,
                        help="per size, implementation and round")
    parser.add_argument("--models", help="comma-separated sizes (default: all)")
    parser.add_argument("--before", metavar="SRC",
                        help="also time lmsuite from this source tree (an earlier src/)")
    parser.add_argument("--worker", choices=[*IMPLEMENTATIONS, BEFORE])
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.config)
        return
    configure()
    from lmsuite.config import load_suite
    from lmsuite.model.neox import config_for_size

    suite = load_suite(args.config)
    names = args.models.split(",") if args.models else suite.model_names()
    for name in names:
        suite.model(name)  # an unknown size fails here, with the sizes there are
    implementations = IMPLEMENTATIONS + ((BEFORE,) if args.before else ())

    def environment(impl: str) -> dict:
        env = dict(os.environ)
        if impl == "transformers":
            env["LMSUITE_MKL_TUNED"] = "0"
        if impl == BEFORE:
            env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(args.before),
                                                 env.get("PYTHONPATH", "")])
        return env

    workers = {impl: subprocess.Popen(
        [sys.executable, __file__, args.config, "--worker", impl],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=environment(impl)) for impl in implementations}

    def answer(impl: str) -> str:
        line = workers[impl].stdout.readline().strip()
        if not line:
            sys.exit(f"the {impl} worker stopped; run `{sys.argv[0]} {args.config} --worker "
                     f"{impl}` and type a size and a duration to see why")
        return line

    for impl in implementations:
        answer(impl)  # "ready"

    def measure(impl: str, name: str) -> float:
        workers[impl].stdin.write(f"{name} {args.seconds}\n")
        workers[impl].stdin.flush()
        return float(answer(impl))

    for name in names:
        rates = {impl: [] for impl in implementations}
        size_peaks = []
        for r in range(args.rounds):
            k = r % len(implementations)
            for impl in implementations[k:] + implementations[:k]:
                rates[impl].append(measure(impl, name))
            size_peaks.append(matmul_gflops())
        peak = statistics.median(size_peaks)
        hf = rates["transformers"]

        def over(impl: str, base: list[float] = hf, rates: dict = rates) -> list[float]:
            return [a / b for a, b in zip(rates[impl], base, strict=True)]

        cfg = config_for_size(suite.model(name), suite.data.vocab_size, suite.data.seq_len)
        per_token = flops_per_token(cfg, suite.data.seq_len)
        figures = {
            "speedup": figure(over("lmsuite"), "x transformers"),
            "speedup_same_runtime": figure(over("lmsuite", rates["transformers+runtime"]),
                                           "x transformers with lmsuite's process settings"),
            "lmsuite_tokens_per_s": figure(rates["lmsuite"], "tokens/s", 0),
            "transformers_tokens_per_s": figure(hf, "tokens/s", 0),
            "share_of_matmul_peak": figure([r * per_token / 1e9 / p for r, p in
                                            zip(rates["lmsuite"], size_peaks, strict=True)],
                                           "of the 1024^3 fp32 rate"),
        }
        if args.before:
            figures["speedup_before"] = figure(over(BEFORE), "x transformers, --before tree")
            figures["after_over_before"] = figure(over("lmsuite", rates[BEFORE]), "x")
        emit("train", name, figures, matmul_in_process_gflops=round(peak, 1),
             d_model=cfg.d_model, layers=cfg.layers,
             batch=[suite.train.micro_batch_size, suite.data.seq_len], rounds=args.rounds,
             before=args.before)
    for w in workers.values():
        w.stdin.close()
        w.wait()


if __name__ == "__main__":
    main()
