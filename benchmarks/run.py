"""`make bench`: run the benchmarks, keep each one's latest result lines in
benchmarks/results/<name>.jsonl, and regenerate benchmarks/RESULTS.md from them.

    .venv/bin/python benchmarks/run.py                 # every benchmark (about an hour)
    .venv/bin/python benchmarks/run.py train mkl       # some of them
    .venv/bin/python benchmarks/run.py train -- --before ../old/src   # with extra arguments
    .venv/bin/python benchmarks/run.py --table         # only regenerate RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> (command after the Python interpreter, what it measures)
BENCHMARKS = {
    "train": (["benchmarks/bench_train.py", "--rounds", "9"],
              "Training tokens/s of lmsuite's trainer against transformers' GPTNeoXForCausalLM "
              "on every size of configs/tiny.toml, the two taking turns in each round (target: "
              "lmsuite at least 1.5x at d_model 64-128)."),
    "mkl": (["benchmarks/bench_mkl.py"],
            "Each matrix product of a tiny-7 training step on MKL's tuned path against its "
            "generic one (lmsuite/accel/blas.py), in processes taking turns."),
    "step_parts": (["benchmarks/bench_step_parts.py", "--models", "tiny-3,tiny-7"],
                   "Where a training step spends its time, and what the CPU kernels are worth."),
    "attention": (["benchmarks/bench_attention.py"],
                  "The CPU attention kernel against rotary + PyTorch's "
                  "scaled_dot_product_attention."),
    "allocator": (["benchmarks/bench_allocator.py"],
                  "Allocating and filling a freed 32 MB tensor with and without "
                  "keep_freed_memory."),
    "compile": (["benchmarks/bench_compile.py"],
                "Eager (with and without the kernels) against torch.compile, training."),
    "batch_at": (["benchmarks/bench_batch_at.py"],
                 "batch_at latency for Pythia's 1024 x 2049 batch (target: median at most "
                 "5 ms)."),
    "dedup": (["benchmarks/bench_dedup.py"],
              "Near-deduplication throughput and how well it finds the planted copies."),
    "tokenize": (["benchmarks/bench_tokenize.py"], "Tokenizer training and encoding speed."),
    "memorization": (["benchmarks/bench_memorization.py"],
                     "The memorization scan (one teacher-forced pass) against transformers' "
                     "generate: identical flags, speed at batch 16 and 256 (targets 5x and "
                     "1.5x), the scan's share of the fp32 matmul rate (target 60%), peak memory."),
    "counting": (["benchmarks/bench_counting.py"],
                 "Term counts over a 100M-token train.bin: the suffix array against decoding "
                 "and a regular expression; same counts, time, peak memory."),
    "precision": (["benchmarks/bench_precision.py"],
                  "fp32 against bf16 autocast on this CPU: tokens/s and the loss after the same "
                  "12 steps."),
    "gpu": (["benchmarks/bench_gpu.py"],
            "The GPU path: tokens/s and MFU of the pythia-70m/160m/410m shapes, eager and "
            "compiled, and bf16-on-GPU against fp32-on-CPU loss (target: >= 45% MFU for 160m "
            "on one H100/H200-class GPU). Measures nothing without CUDA."),
    "suite": (["benchmarks/bench_suite.py"],
              "Building the data and training all 16 models of configs/tiny.toml."),
}


def run(name: str, extra: list[str]) -> None:
    command = [*BENCHMARKS[name][0], *extra]
    shown = " ".join([".venv/bin/python", *map(shlex.quote, command)])
    print(f"running {shown}", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, *command], stdout=subprocess.PIPE, text=True,
                          cwd=HERE.parent)
    if proc.returncode != 0:
        sys.exit(f"{name}: exited with {proc.returncode}; its results are unchanged")
    lines = []
    for line in proc.stdout.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "figures" in row:
            lines.append(json.dumps({**row, "command": shown}))
    if not lines:
        sys.exit(f"{name}: printed no result line; its results are unchanged")
    RESULTS.mkdir(exist_ok=True)
    sys.path.insert(0, str(HERE.parent / "src"))
    from lmsuite.durable import write_file

    write_file(RESULTS / f"{name}.jsonl", "".join(line + "\n" for line in lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks ({', '.join(BENCHMARKS)})")
    parser.add_argument("--table", action="store_true", help="only regenerate RESULTS.md")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; they are {', '.join(BENCHMARKS)}")
    if extra and len(args.names) != 1:
        parser.error("arguments after -- go to one named benchmark")
    if not args.table:
        for name in args.names or BENCHMARKS:
            run(name, extra)
    from report import write_results

    print(f"wrote {write_results(BENCHMARKS, RESULTS, HERE / 'RESULTS.md')}")


if __name__ == "__main__":
    main()
