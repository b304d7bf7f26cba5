"""Tokenization throughput (MB/s of UTF-8 text) with batch encoding, as `data build` does."""

import json
import os
import sys
import time
from pathlib import Path

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
result = {"benchmark": "tokenize", "cores": os.cpu_count(), "documents": DOCS,
          "corpus_mb": round(sum(len(t.encode()) for t in texts) / 1e6, 1),
          "train_bpe_4096_s": round(train_s, 2),
          "encode_mb_per_s_bpe4096": round(throughput(tok, texts), 1)}
if PYTHIA.is_file():
    result["encode_mb_per_s_pythia20b"] = round(throughput(load_tokenizer(PYTHIA), texts), 1)
print(json.dumps(result))
