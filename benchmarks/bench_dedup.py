"""Near-dedup throughput (documents/s) on the built-in corpus, and what it removed."""

import json
import sys
import time

from lmsuite.config import SyntheticConfig
from lmsuite.data.dedup import deduplicate
from lmsuite.data.synthetic import generate_corpus

DOCS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
texts, meta, _, _ = generate_corpus(SyntheticConfig(), DOCS, seed=1)
start = time.perf_counter()
kept, removed = deduplicate(texts)
seconds = time.perf_counter() - start
planted = {i for i, m in enumerate(meta) if m["is_copy"]}
print(json.dumps({"benchmark": "dedup", "documents": DOCS, "docs_per_s": round(DOCS / seconds),
                  "removed": len(removed), "planted_copies": len(planted),
                  "precision": round(len(planted & set(removed)) / len(removed), 4),
                  "recall": round(len(planted & set(removed)) / len(planted), 4)}))
