"""The whole CPU suite end to end: data build and training times of all 16 models, and how
far the final validation loss falls below the unigram baseline. One JSON line.

    .venv/bin/python benchmarks/bench_suite.py [configs/tiny.toml] [--out DIR]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import configure, emit, figure

configure()

import numpy as np  # noqa: E402

from lmsuite.config import load_suite  # noqa: E402
from lmsuite.data.build import build_data  # noqa: E402
from lmsuite.data.indexed import IndexedDataset  # noqa: E402
from lmsuite.evaluate.runner import evaluate  # noqa: E402
from lmsuite.results import read_rows  # noqa: E402
from lmsuite.train.suite import train_suite  # noqa: E402


def unigram_baseline(data_dir: Path) -> dict:
    """Entropy of the training tokens' unigram distribution, and that distribution's
    cross-entropy on the held-out tokens (add-one smoothed), in nats per token."""
    train = IndexedDataset(data_dir / "train").tokens
    vocab = int(max(train.max(), IndexedDataset(data_dir / "val").tokens.max())) + 1
    counts = np.bincount(train, minlength=vocab).astype(np.float64)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    smoothed = (counts + 1) / (counts.sum() + vocab)
    val = IndexedDataset(data_dir / "val")
    targets = np.concatenate([val[i][:-1] for i in range(len(val))])  # what perplexity scores
    return {"unigram_entropy_nats": round(entropy, 4),
            "unigram_val_cross_entropy_nats": round(float(-np.log(smoothed[targets]).mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/tiny.toml")
    parser.add_argument("--out", help="run folder (default: a temporary one)")
    args = parser.parse_args()
    suite = load_suite(args.config)
    out = Path(args.out or tempfile.mkdtemp(prefix="lmsuite-bench-"))
    start = time.perf_counter()
    build_data(suite, out / "data", progress=False)
    data_s = time.perf_counter() - start
    start = time.perf_counter()
    train_suite(suite, out, progress=False)
    train_s = time.perf_counter() - start
    per_model = {}
    for folder in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").is_file()):
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        per_model[folder.name] = {"train_s": round(last["elapsed_s"], 1)}
    results = evaluate(out, tasks=["perplexity"], steps=str(suite.train.steps), progress=False)
    for row in read_rows(results):
        if row["metric"] == "loss":
            name = row["model"] + ("-deduped" if row["dataset"] == "deduped" else "")
            per_model[name]["val_loss_nats"] = round(row["value"], 4)
    baseline = unigram_baseline(out / "data" / "standard")
    largest = per_model[suite.models[-1].name]["val_loss_nats"]
    emit("suite", args.config, {
        "data_build_s": figure(data_s, "s", 1), "train_all_s": figure(train_s, "s", 1),
        "largest_val_loss_nats": figure(largest, "nats/token"),
        "unigram_val_cross_entropy_nats": figure(
            baseline["unigram_val_cross_entropy_nats"], "nats/token")},
        models=len(per_model), steps=suite.train.steps,
        tokens_per_model=suite.train.steps * suite.train.batch_size * suite.data.seq_len,
        per_model=per_model, **baseline)


if __name__ == "__main__":
    main()
