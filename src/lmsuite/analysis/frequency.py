"""The effect of pretraining term frequency (Razeghi et al. 2022, as the Pythia paper ran it):
how often each term occurred in what a model had trained on by a checkpoint, against how
well the model answers questions about it.

Terms are the arithmetic operands 0-99 and the invented entities' names, counted as token
sequences with the dataset's suffix-array index: whole words only (the token after a match
must not continue the number or the word, " 47" + "5" being 475; a term written at the start
of a line or document must not be preceded by part of a word), never across two samples, and
cumulative in training order (a match at token p of train.bin belongs to step
p // (B · (seq_len + 1))). Operand pairs are counted too, where the second follows the first
after at most three words ("47 times 23", "47 boxes with 23"), as Pythia's `run_freq_count.py`
counted them.

The join: per checkpoint and shot count, arithmetic accuracy per first operand and facts
accuracy per entity, from the per-item rows of `lmsuite eval`, against the term's count by
then; Δ = mean accuracy over the 10% most frequent terms minus the 10% least frequent.
"""

from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lmsuite.analysis.index import TokenIndex
from lmsuite.analysis.targets import StudyModel, study_models
from lmsuite.data.order import item_neighbours
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.durable import write_file
from lmsuite.errors import LmsuiteError
from lmsuite.evaluate.tasks import eval_items_dir
from lmsuite.progress import bar as progress_bar
from lmsuite.results import ResultStore, Source, read_rows

OPERANDS = [str(x) for x in range(100)]
SHARE = 0.1
"""Pythia's Δ compares the 10% most frequent terms with the 10% least frequent."""
PAIR_SPAN = 12
"""Tokens after a first operand searched for the second (three words and a number fit)."""
PAIR = re.compile(r"^(?:\s+[^\s\d]+){0,3}\s+(\d+)(?=\D)")


@functools.lru_cache(maxsize=8)
def _edges(tokenizer_json: str) -> tuple[np.ndarray, np.ndarray]:
    """Per token id: whether it starts by continuing a word or number (a letter, digit or
    hyphen first), and whether it ends inside one (a letter or digit last)."""
    tok = Tokenizer.from_str(tokenizer_json)
    text = [tok.decode([i]) for i in range(tok.get_vocab_size())]
    starts = np.array([t[:1].isalnum() or t[:1] == "-" for t in text])
    ends = np.array([t[-1:].isalnum() for t in text])
    return starts, ends


class TermCounter:
    """Whole-word occurrences of terms in a dataset's training items."""

    def __init__(self, index: TokenIndex, tokenizer: Tokenizer,
                 neighbours: tuple[np.ndarray, np.ndarray] | None):
        self.index, self.tokenizer = index, tokenizer
        self.continues, self.ends_word = _edges(tokenizer.to_str())
        self.neighbours = neighbours

    def queries(self, term: str) -> list[tuple[list[int], bool]]:
        """The term's token sequences as the corpus writes it: after a space, and at the start
        of a line or document (which must then follow no part of a word)."""
        encode = self.tokenizer.encode
        return [(encode(" " + term, add_special_tokens=False).ids, False),
                (encode(term, add_special_tokens=False).ids, True)]

    def _token(self, position: np.ndarray, item: np.ndarray, side: int) -> np.ndarray:
        """The token at `position`, which may lie just outside its item (side -1: before it,
        +1: after it): then the document stream's, or -1 where unknown."""
        length = self.index.sample_len
        inside = (position // length == item) & (position >= 0)
        tokens = self.index.tokens
        out = np.where(inside, tokens[np.clip(position, 0, len(tokens) - 1)].astype(np.int64),
                       -1)
        if self.neighbours is not None and (~inside).any():
            edge = self.neighbours[0 if side < 0 else 1]
            out[~inside] = edge[item[~inside]]
        return out

    def occurrences(self, term: str) -> np.ndarray:
        """Sorted start positions of the term's whole-word occurrences inside items."""
        found = []
        for query, at_line_start in self.queries(term):
            positions = self.index.positions(query)
            item = positions // self.index.sample_len
            after = self._token(positions + len(query), item, +1)
            keep = ~((after >= 0) & self.continues[np.maximum(after, 0)])
            if at_line_start:
                before = self._token(positions - 1, item, -1)
                keep &= ~((before >= 0) & self.ends_word[np.maximum(before, 0)])
            found.append(positions[keep])
        return np.unique(np.concatenate(found))

    def pairs(self, first: dict[str, np.ndarray], seconds: set[str]) -> list[tuple]:
        """(first term, second term, position) of each first operand followed, after at most
        three words, by a number among `seconds`, inside one item."""
        length, tokens = self.index.sample_len, self.index.tokens
        out = []
        for term, positions in first.items():
            width = len(self.tokenizer.encode(" " + term, add_special_tokens=False).ids)
            for p in positions.tolist():
                end = min((p // length + 1) * length, p + width + PAIR_SPAN)
                text = self.tokenizer.decode(tokens[p + width:end].tolist())
                match = PAIR.match(text)
                if match and match.group(1) in seconds:
                    out.append((term, match.group(1), p))
        return out


def steps_of(positions: np.ndarray, sample_len: int, batch_size: int) -> np.ndarray:
    """The training step at which each token position was seen."""
    return positions // sample_len // batch_size


def cumulative(steps_seen: np.ndarray, checkpoints: list[int]) -> np.ndarray:
    """How many occurrences were seen before each checkpoint (trained on steps 0..N-1)."""
    return np.searchsorted(np.sort(steps_seen), np.asarray(checkpoints), side="left")


@dataclass
class TermCounts:
    """Cumulative counts of every term at each checkpoint step of one dataset."""

    steps: list[int]
    operands: dict[str, np.ndarray]
    entities: dict[str, np.ndarray]
    pairs: dict[tuple[str, str], np.ndarray]

    def at(self, kind: str, step: int) -> dict[str, int]:
        i = self.steps.index(step)
        table = self.operands if kind == "operands" else self.entities
        return {term: int(counts[i]) for term, counts in table.items()}


def count_terms(index: TokenIndex, tokenizer: Tokenizer, neighbours, entities: list[str],
                steps: list[int], batch_size: int, progress: bool = True) -> TermCounts:
    counter = TermCounter(index, tokenizer, neighbours)
    length = index.sample_len
    bar = progress_bar(len(OPERANDS) + len(entities), "term counts", "term", enabled=progress,
                       weight=1e7)
    found = {}
    for term in OPERANDS + entities:
        found[term] = counter.occurrences(term)
        bar.update(1)
    bar.close()

    def table(terms):
        return {t: cumulative(steps_of(found[t], length, batch_size), steps) for t in terms}

    by_pair = defaultdict(list)
    for first, second, p in counter.pairs({t: found[t] for t in OPERANDS}, set(OPERANDS)):
        by_pair[(first, second)].append(p)
    pairs = {key: cumulative(steps_of(np.asarray(ps), length, batch_size), steps)
             for key, ps in by_pair.items()}
    return TermCounts(list(steps), table(OPERANDS), table(entities), pairs)


def save_counts(path: Path, counts: TermCounts, source: str) -> None:
    record = {"source": source, "steps": counts.steps,
              "operands": {t: c.tolist() for t, c in counts.operands.items()},
              "entities": {t: c.tolist() for t, c in counts.entities.items()},
              "pairs": {f"{a} {b}": c.tolist() for (a, b), c in counts.pairs.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(record))


def load_counts(path: Path, source: str) -> TermCounts | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("source") != source:
        return None

    def arrays(table):
        return {t: np.asarray(c) for t, c in table.items()}

    return TermCounts(record["steps"], arrays(record["operands"]), arrays(record["entities"]),
                      {tuple(k.split(" ")): np.asarray(c) for k, c in record["pairs"].items()})


# --- the join --------------------------------------------------------------------------------


def delta(accuracy: dict, count: dict, share: float = SHARE) -> tuple[float, int]:
    """Mean accuracy of the `share` most frequent terms minus that of the `share` least
    frequent (ties in count broken by the term), and the number of terms compared."""
    terms = sorted(accuracy, key=lambda t: (count[t], str(t)))
    n = max(1, round(share * len(terms)))
    if len(terms) < 2 * n:
        return float("nan"), len(terms)
    top = np.mean([accuracy[t] for t in terms[-n:]])
    bottom = np.mean([accuracy[t] for t in terms[:n]])
    return float(top - bottom), len(terms)


def _per_term(items: list[dict], key) -> dict:
    sums: dict = defaultdict(list)
    for row in items:
        sums[key(row["item"])].append(row["value"])
    return {t: float(np.mean(v)) for t, v in sums.items()}


def _entities(data_dir: Path) -> list[str]:
    folder = eval_items_dir(data_dir)
    if folder is None or not (folder / "qa.jsonl").is_file():
        return []
    names = [json.loads(line)["entity"] for line in (folder / "qa.jsonl").read_text().split("\n")
             if line.strip()]
    return list(dict.fromkeys(names))


def frequency(target: str, steps: str = "log", data: str | None = None,
              batch_size: int | None = None, seq_len: int | None = None,
              results: str | None = None, progress: bool = True,
              items: str | None = None) -> Path:
    """Count the terms in each dataset, evaluate arithmetic and facts at the chosen
    checkpoints where that was not done yet, and write Δ rows (results/frequency.jsonl) and
    accuracy-against-count curves (results/frequency/). Returns the results file.

    The items (arithmetic and facts questions, and so the terms) come from the training
    dataset where it was built from the built-in corpus, else from `items`: a dataset folder
    that was (for a real Pythia model, whose data holds no such items)."""
    from lmsuite.evaluate.runner import evaluate

    models = study_models(target, steps, data, batch_size, seq_len)
    for m in models:
        source = Path(items) if items else m.data_dir
        if eval_items_dir(source) is None:
            raise LmsuiteError(f"{source}: the frequency study needs the built-in corpus's "
                               "arithmetic and facts items (a dataset built from it; for other "
                               "data pass --items DATASET_DIR)")
    store = ResultStore(results or models[0].run.study_results("frequency"))
    counted: dict[tuple, TermCounts] = {}
    for m in models:
        items_dir = Path(items) if items else m.data_dir
        evaluate(m.folder, tasks=["arithmetic", "facts"],
                 steps=",".join(map(str, m.steps)), data=items_dir, progress=progress)
        key = (m.data_dir, tuple(m.all_steps), m.batch_size)
        if key not in counted:
            counted[key] = _counts(m, items_dir, progress)
        _join(m, counted[key], store)
    return store.path


def _counts(m: StudyModel, items_dir: Path, progress: bool) -> TermCounts:
    index = TokenIndex.open(m.data_dir, progress=progress)
    # lmsuite's datasets keep their tokenizer; Pythia's data is read with the model's.
    tokenizer_at = m.data_dir if (m.data_dir / "tokenizer.json").is_file() else \
        m.checkpoint(m.all_steps[-1])
    entities = _entities(items_dir)
    source = (f"{index.data.bin_path.resolve()} {index.tokens.size} B={m.batch_size} "
              f"steps={m.all_steps} entities={len(entities)}")
    path = m.run.term_counts(m.dataset or "standard")
    counts = load_counts(path, source)
    if counts is None:
        counts = count_terms(index, load_tokenizer(tokenizer_at), item_neighbours(m.data_dir),
                             entities, m.all_steps, m.batch_size, progress)
        save_counts(path, counts, source)
    return counts


def _join(m: StudyModel, counts: TermCounts, store: ResultStore) -> None:
    items = [r for r in read_rows(ResultStore(m.run.eval_results).items_path)
             if r.get("model") == m.model and r.get("dataset") == m.dataset]
    path = m.run.frequency_curves(m.name)
    curves = json.loads(path.read_text())["steps"] if path.is_file() else {}
    for step in m.steps:
        source = Source(m.suite, m.model, m.dataset, step)
        at_step = [r for r in items if r.get("step") == step]
        operands, entities = counts.at("operands", step), counts.at("entities", step)
        rows, curve = [], {}
        arithmetic = [r for r in at_step if r["task"] == "arithmetic"]
        for shots in sorted({r["item"]["shots"] for r in arithmetic}):
            chosen = [r for r in arithmetic if r["item"]["shots"] == shots]
            accuracy = _per_term(chosen, lambda item: str(item["a"]))
            value, n = delta(accuracy, operands)
            rows.append(source.row("frequency", f"delta_arithmetic_{shots}shot", value, n))
            by_pair = _per_term(chosen, lambda item: f"{item['a']} {item['b']}")
            pair_counts = {p: int(counts.pairs[tuple(p.split(" "))][counts.steps.index(step)])
                           if tuple(p.split(" ")) in counts.pairs else 0 for p in by_pair}
            value, n = delta(by_pair, pair_counts)
            rows.append(source.row("frequency", f"delta_pairs_{shots}shot", value, n))
            curve[f"arithmetic_{shots}shot"] = {"count": [operands[t] for t in accuracy],
                                                 "acc": list(accuracy.values())}
        facts = [r for r in at_step if r["task"] == "facts"]
        if facts and entities:
            accuracy = _per_term(facts, lambda item: item["entity"])
            value, n = delta(accuracy, entities)
            rows.append(source.row("frequency", "delta_facts", value, n))
            curve["facts"] = {"count": [entities[t] for t in accuracy],
                              "acc": list(accuracy.values())}
        curves[str(step)] = curve
        if rows and not store.done(source, "frequency"):
            store.add(source, "frequency", rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, {"model": m.model, "dataset": m.dataset, "steps": curves})
