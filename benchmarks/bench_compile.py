"""Does torch.compile pay for a suite's model on this machine? Training tokens/s of the model
as lmsuite trains it (eager, with its CPU kernels), eager on PyTorch's operations alone, and
compiled (the compiler traces PyTorch's operations: the kernels stand aside while it traces),
the time of the first two steps (the compile), and the steps the compiled model needs to win
that time back from lmsuite's eager model. One JSON line per size.

    .venv/bin/python benchmarks/bench_compile.py [configs/tiny.toml] [--models tiny-3,tiny-8]
"""

import argparse
import os
import tempfile
import time
from contextlib import nullcontext

from common import configure, emit, figure

configure()

import torch  # noqa: E402

from lmsuite import accel  # noqa: E402
from lmsuite.config import load_suite  # noqa: E402
from lmsuite.model.neox import GPTNeoX, config_for_size  # noqa: E402
from lmsuite.train.trainer import make_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.toml")
    parser.add_argument("--models", default="tiny-3,tiny-8")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    # A cold compile, as a user's first run has it: a fresh cache for inductor's output.
    with tempfile.TemporaryDirectory(prefix="lmsuite-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        run(args)


def run(args: argparse.Namespace) -> None:
    suite = load_suite(args.config)
    batch = torch.randint(0, suite.data.vocab_size,
                          (suite.train.micro_batch_size, suite.data.seq_len + 1))
    tokens = batch.shape[0] * suite.data.seq_len
    for name in args.models.split(","):
        size = suite.model(name)
        cfg = config_for_size(size, suite.data.vocab_size, suite.data.seq_len)
        result = {}
        for mode in ("eager", "eager_pytorch_ops", "compiled"):
            model = GPTNeoX(cfg)
            model.init_weights(0)
            accel.install(model)
            optimizer = make_optimizer(model, size, suite, fused=True)
            forward = torch.compile(model) if mode == "compiled" else model

            def step(forward=forward, model=model, optimizer=optimizer, mode=mode):
                with accel.disabled() if mode == "eager_pytorch_ops" else nullcontext():
                    loss = forward(batch[:, :-1], labels=batch[:, 1:])[1]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            start = time.perf_counter()
            step()  # the first step compiles
            step()
            result[f"{mode}_first_two_steps_s"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            result[f"{mode}_tokens_per_s"] = round(tokens * args.steps /
                                                   (time.perf_counter() - start))
        per_step = {m: tokens / result[f"{m}_tokens_per_s"] for m in ("eager", "compiled")}
        saved = per_step["eager"] - per_step["compiled"]
        extra = result["compiled_first_two_steps_s"] - result["eager_first_two_steps_s"]
        emit("compile", name, {
            f"{m}_tokens_per_s": figure(result[f"{m}_tokens_per_s"], "tokens/s", 0)
            for m in ("eager", "eager_pytorch_ops", "compiled")} | {
            "compile_s": figure(extra, "s (first two steps, over eager's)", 1)},
            break_even_steps=round(extra / saved) if saved > 0 else None, steps=args.steps)


if __name__ == "__main__":
    main()
