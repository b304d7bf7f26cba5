"""Counting terms in the training tokens: the suffix array (tokengrams, as `lmsuite frequency`
counts) against decoding the text and matching a regular expression, on a train.bin of at
least 100M tokens made from the built-in corpus (runs/tiny's samples repeated, each copy in
another order: copies in one order would give suffixes that agree for hundreds of thousands of
tokens, a worst case for building a suffix array that no real corpus has). Both count
every operand 0-99 and every entity, whole words inside samples, cumulative at five steps;
the counts must agree. Times each (the suffix array with and without building its index) and
peak resident memory, each in its own process."""

import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import configure, emit, figure

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 100_000_000


def make_data(folder: Path) -> Path:
    import shutil

    import numpy as np

    from lmsuite.data.indexed import IndexedDatasetWriter
    from lmsuite.data.order import open_train

    source = ROOT / "runs" / "tiny" / "data" / "standard"
    if not source.is_dir():
        sys.exit("bench_counting: needs runs/tiny (make demo) for the built-in corpus's samples")
    rows = np.asarray(open_train(source).rows(0, len(open_train(source))))
    copies = -(-TOKENS // rows.size)
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(folder / "train", np.uint16) as w:
        for _ in range(copies):
            w.add_items(rows[rng.permutation(len(rows))])
    for name in ("tokenizer.json", "corpus.meta"):
        target = folder / name
        (shutil.copytree if (source / name).is_dir() else shutil.copy)(source / name, target)
    return folder


def steps_of(folder: Path) -> tuple[list[int], int]:
    from lmsuite.data.order import open_train

    samples, batch = len(open_train(folder)), 8
    last = samples // batch
    return [last // 16, last // 4, last // 2, 3 * last // 4, last], batch


def suffix_array(folder: Path) -> dict:
    from lmsuite.analysis.frequency import _entities, count_terms
    from lmsuite.analysis.index import TokenIndex
    from lmsuite.data.tokenizer import load_tokenizer

    start = time.perf_counter()
    index = TokenIndex.open(folder, progress=False)
    built = time.perf_counter() - start
    steps, batch = steps_of(folder)
    counts = count_terms(index, load_tokenizer(folder), None, _entities(folder), steps, batch,
                         progress=False)
    return {"seconds": time.perf_counter() - start, "index_s": built,
            "counts": {t: c.tolist() for t, c in {**counts.operands, **counts.entities}.items()}}


def regex(folder: Path) -> dict:
    import numpy as np

    from lmsuite.analysis.frequency import OPERANDS, _entities
    from lmsuite.data.order import open_train
    from lmsuite.data.tokenizer import load_tokenizer

    start = time.perf_counter()
    tok = load_tokenizer(folder)
    terms = OPERANDS + _entities(folder)
    pattern = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, sorted(terms, key=len,
                                                                       reverse=True)))
                         + r")(?!\w)")
    data = open_train(folder)
    steps, batch = steps_of(folder)
    per_sample = {t: [] for t in terms}
    chunk = 65536
    for first in range(0, len(data), chunk):
        rows = np.asarray(data.rows(first, min(len(data), first + chunk)))
        # <|endoftext|> kept in the text: a term right before it ends its word there (dropped,
        # "A: 0" and the next document's "The" would read as "0The")
        for i, text in enumerate(tok.decode_batch(rows.tolist(), skip_special_tokens=False)):
            for term in pattern.findall(text):
                per_sample[term].append(first + i)
    counts = {}
    for term, samples in per_sample.items():
        at = np.asarray(samples, np.int64) // batch  # the step that trains on the sample
        counts[term] = [int((at < s).sum()) for s in steps]
    return {"seconds": time.perf_counter() - start, "counts": counts}


def worker(method: str, folder: str) -> None:
    configure()
    out = (suffix_array if method == "suffix_array" else regex)(Path(folder))
    out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


def main() -> None:
    if "--worker" in sys.argv:
        method, folder = sys.argv[sys.argv.index("--worker") + 1:]
        return worker(method, folder)
    folder = make_data(Path(tempfile.mkdtemp(prefix="bench-count-")))
    found = {}
    for method in ("suffix_array", "regex"):
        out = subprocess.run([sys.executable, __file__, "--worker", method, str(folder)],
                             capture_output=True, text=True, check=True)
        found[method] = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = found["suffix_array"]["counts"], found["regex"]["counts"]
    agree = sum(a[t] == b.get(t) for t in a)
    from lmsuite.data.order import open_train

    tokens = open_train(folder).tokens.size
    emit("counting", f"{tokens / 1e6:.0f}M tokens",
         {"suffix_array_s": figure(found["suffix_array"]["seconds"], "s"),
          "of_which_index_build_s": figure(found["suffix_array"]["index_s"], "s"),
          "regex_s": figure(found["regex"]["seconds"], "s"),
          "speedup": figure(found["regex"]["seconds"] / found["suffix_array"]["seconds"], "x"),
          "speedup_index_built": figure(found["regex"]["seconds"] / (
              found["suffix_array"]["seconds"] - found["suffix_array"]["index_s"]), "x"),
          "suffix_array_peak_mib": figure(found["suffix_array"]["peak_bytes"] / 2**20, "MiB", 0),
          "regex_peak_mib": figure(found["regex"]["peak_bytes"] / 2**20, "MiB", 0)},
         terms=len(a), terms_with_equal_counts=agree, tokens=int(tokens))
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
