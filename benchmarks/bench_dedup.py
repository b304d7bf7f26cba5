"""Near-dedup throughput (documents/s) on the built-in corpus, and how well it finds the copies
planted in it. One result line.

    .venv/bin/python benchmarks/bench_dedup.py [DOCUMENTS]
"""

import sys
import time

from common import emit, figure

from lmsuite.config import SyntheticConfig
from lmsuite.data.dedup import deduplicate
from lmsuite.data.synthetic import generate_corpus

DOCS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
texts, meta, _, _ = generate_corpus(SyntheticConfig(), DOCS, seed=1)
start = time.perf_counter()
kept, removed = deduplicate(texts)
seconds = time.perf_counter() - start
planted = {i for i, m in enumerate(meta) if m["is_copy"]}
found = planted & set(removed)
emit("dedup", f"{DOCS:,} built-in documents", {
    "docs_per_s": figure(DOCS / seconds, "documents/s", 0),
    "precision": figure(len(found) / len(removed), "of removed documents planted"),
    "recall": figure(len(found) / len(planted), "of planted copies removed")},
    removed=len(removed), planted_copies=len(planted))
