"""Tokenization throughput (MB/s of UTF-8 text) with batch encoding, as `data build` does,
with a trained 4096-token BPE and (where ../shared/pythia holds it) Pythia's tokenizer.

    .venv/bin/python benchmarks/bench_tokenize.py [DOCUMENTS]
"""

import sys
import time
from pathlib import Path

from common import emit, figure

from lmsuite.config import SyntheticConfig
from lmsuite.data.synthetic import generate_corpus
from lmsuite.data.tokenizer import load_tokenizer, train_tokenizer

DOCS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
PYTHIA = Path(__file__).resolve().parents[2] / "shared" / "pythia" / "20B_tokenizer.json"


def throughput(tok, texts):
    size = sum(len(t.encode()) for t in texts)
    start = time.perf_counter()
    for i in range(0, len(texts), 1024):
        tok.encode_batch_fast(texts[i:i + 1024], add_special_tokens=False)
    return size / 1e6 / (time.perf_counter() - start)


texts, *_ = generate_corpus(SyntheticConfig(), DOCS, seed=1)
start = time.perf_counter()
tok = train_tokenizer(texts, 4096)
train_s = time.perf_counter() - start
figures = {"train_bpe_4096_s": figure(train_s, "s", 2),
           "encode_bpe_4096": figure(throughput(tok, texts), "MB/s", 2)}
if PYTHIA.is_file():
    figures["encode_pythia_20b"] = figure(throughput(load_tokenizer(PYTHIA), texts), "MB/s", 2)
emit("tokenize", f"{DOCS:,} built-in documents", figures,
     corpus_mb=round(sum(len(t.encode()) for t in texts) / 1e6, 1))
