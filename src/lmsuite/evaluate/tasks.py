"""Evaluation tasks: LAMBADA-style last word, validation perplexity, and the built-in probes."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from lmsuite.data.corpus import jsonl_texts
from lmsuite.data.indexed import IndexedDataset
from lmsuite.data.tokenizer import EOD, load_tokenizer
from lmsuite.errors import DataFormatError, LmsuiteError
from lmsuite.evaluate.scoring import (
    continuation_requests,
    encode_pair,
    next_token_logprobs,
    score,
)
from lmsuite.model.neox import GPTNeoX

SHOTS = (0, 2, 4, 8, 16)


def eval_items_dir(data_dir: Path | None) -> Path | None:
    """The folder of the built-in corpus's evaluation items in a dataset folder, or None when
    there is no dataset folder or it was built from another corpus."""
    if data_dir is None or not (Path(data_dir) / "corpus.meta" / "eval").is_dir():
        return None
    return Path(data_dir) / "corpus.meta" / "eval"


@dataclass
class Context:
    """What a task needs: the model, its tokenizer and context length, and the data folder."""

    model: GPTNeoX
    tokenizer: Tokenizer
    max_len: int
    data_dir: Path | None
    lambada_file: Path | None = None
    said: set[str] | None = None
    """Lines already said in this evaluation (each is said once); None: say every time."""

    def say(self, line: str) -> None:
        if self.said is None or line not in self.said:
            print(f"lmsuite eval: {line}", file=sys.stderr)
        if self.said is not None:
            self.said.add(line)

    def eval_items(self, name: str) -> list[dict]:
        """The built-in corpus's held-out items of one kind (not to be changed: they are
        read once and shared by every checkpoint's evaluation)."""
        if self.data_dir is None:
            raise LmsuiteError(f"task needs the built-in corpus's items ({name}); pass --data "
                               "with a dataset folder built from the built-in corpus")
        path = self.data_dir / "corpus.meta" / "eval" / f"{name}.jsonl"
        if not path.is_file():
            raise LmsuiteError(f"{path}: not found; {self.data_dir} was not built from the "
                               "built-in corpus")
        return _read_items(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _read_items(path: Path, mtime_ns: int) -> list[dict]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{number}: not valid JSON ({e.msg}); the dataset's "
                                  "evaluation items are damaged, rebuild it") from None
        if not isinstance(item, dict):
            raise DataFormatError(f"{path}:{number}: expected a JSON object (an item)")
        items.append(item)
    return items


# Each task returns (summary rows as (metric, value, n) or (metric, value, n, standard error),
# per-item rows as (item, metric, value)).
TaskResult = tuple[list[tuple], list[tuple[dict, str, float]]]


def read_lambada(path: str | os.PathLike) -> list[str]:
    """The passages of a LAMBADA file: JSON lines `{"text": ...}`, as lm-evaluation-harness's
    lambada_openai reads them; each passage must hold a context and a last word."""
    path = Path(path)
    if not path.is_file():
        raise LmsuiteError(f"{path}: LAMBADA file not found")
    texts = list(jsonl_texts(path, "text"))
    for number, text in enumerate(texts, 1):
        if " " not in text.strip():
            raise DataFormatError(f"{path}: passage {number} needs a context and a last word, "
                                  f"separated by a space; got {text!r}")
    if not texts:
        raise DataFormatError(f"{path}: no passages")
    return texts


def lambada(ctx: Context) -> TaskResult:
    """Scored as lm-evaluation-harness's lambada_openai: context = text up to the last space,
    target = " " + last word; acc = greedy decoding reproduces every target token; ppl = exp of
    the mean negative log-likelihood of the target over examples."""
    if ctx.lambada_file is not None:
        texts = read_lambada(ctx.lambada_file)
    else:
        texts = [item["text"] for item in ctx.eval_items("lambada")]
    pairs = [encode_pair(ctx.tokenizer, t.rsplit(" ", 1)[0], " " + t.rsplit(" ", 1)[1])
             for t in texts]
    scored = score(ctx.model, *continuation_requests(pairs, ctx.max_len))
    n = len(scored)
    acc = sum(s.is_greedy for s in scored) / n
    ppl = math.exp(-sum(s.total for s in scored) / n)
    return [("acc", acc, n), ("ppl", ppl, n)], []


@functools.lru_cache(maxsize=4)
def _validation_texts(data_dir: Path, mtime_ns: int) -> tuple[list[list[int]], list[str], str]:
    """The held-out documents' tokens, their text, and the tokenizer they were made with."""
    val = IndexedDataset(data_dir / "val")
    tok = load_tokenizer(data_dir)
    ids = [val[i][:-1].tolist() for i in range(len(val))]  # without the closing EOD
    return ids, [tok.decode(x, skip_special_tokens=False) for x in ids], tok.to_str()


def perplexity(ctx: Context) -> TaskResult:
    """Held-out documents, each predicted from an EOD token on, in windows of the model's
    context: mean loss (nats per token), token perplexity and bits per UTF-8 byte."""
    if ctx.data_dir is None:
        raise LmsuiteError("perplexity needs a dataset folder (--data) for its held-out documents")
    ids, texts, data_tok = _validation_texts(
        ctx.data_dir, (ctx.data_dir / "val.bin").stat().st_mtime_ns)
    if ctx.tokenizer.to_str() != data_tok:  # another model's tokenizer: re-encode
        ids = [ctx.tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    eod = ctx.tokenizer.token_to_id(EOD)
    inputs, targets = [], []
    for doc in ids:
        full = [eod, *doc]
        for start in range(0, len(doc), ctx.max_len):
            chunk = full[start + 1: start + 1 + ctx.max_len]
            inputs.append(full[start: start + len(chunk)])
            targets.append(chunk)
    scored = score(ctx.model, inputs, targets)
    nll = -sum(s.total for s in scored)
    tokens = sum(len(t) for t in targets)
    size = sum(len(t.encode()) for t in texts)
    n = len(ids)
    return [("loss", nll / tokens, n), ("token_perplexity", math.exp(nll / tokens), n),
            ("bits_per_byte", nll / math.log(2) / size, n)], []


@functools.lru_cache(maxsize=8)
def _continuing(tokenizer_json: str, extra: str) -> np.ndarray:
    """Per token id: whether the token, decoded, starts with a character that continues a word
    or number (a letter, a digit, or one of `extra`), rather than ending it."""
    tok = Tokenizer.from_str(tokenizer_json)
    first = [tok.decode([i])[:1] for i in range(tok.get_vocab_size())]
    return np.array([c.isalnum() or (c != "" and c in extra) for c in first])


def reproduces(ctx: Context, prompts: list[str], answers: list[str],
               extra: str = "") -> list[bool]:
    """Whether greedy decoding from each prompt gives its answer (" " + answer, as the corpus
    writes it after "A:") and then ends it: the next token does not continue the word or
    number. One teacher-forced pass tells, without generating: greedy decoding reproduces the
    answer exactly when each of its tokens is the argmax after the ones before."""
    continuing = _continuing(ctx.tokenizer.to_str(), extra)
    pairs = [encode_pair(ctx.tokenizer, p, " " + a) for p, a in zip(prompts, answers,
                                                                     strict=True)]
    # the placeholder last target: the position that predicts the token after the answer
    scored = score(ctx.model, [p + a for p, a in pairs], [a + [0] for _, a in pairs])
    return [all(s.greedy[:-1]) and not continuing[s.argmax[-1]] for s in scored]


def _fits(ctx: Context, prompts: list[str], answers: list[str]) -> bool:
    return all(len(p) + len(a) <= ctx.max_len for p, a in (
        encode_pair(ctx.tokenizer, p, " " + a) for p, a in zip(prompts, answers, strict=True)))


def arithmetic(ctx: Context) -> TaskResult:
    """k-shot "Q: What is a times b? A:" (k in 0, 2, 4, 8, 16, demonstrations drawn from the
    other items with a fixed seed): correct when greedy decoding gives the product and ends
    the number there. A shot count whose prompts do not all fit the model's context is left
    out, with a line saying so (a prompt is never cut)."""
    items = ctx.eval_items("arithmetic")
    rng = np.random.default_rng(0)
    answers = [str(item["answer"]) for item in items]
    rows, per_item, left_out = [], [], []
    for k in SHOTS:
        prompts = []
        for i, item in enumerate(items):
            others = [j for j in rng.permutation(len(items))[: k + 1] if j != i][:k]
            demos = [f"Q: What is {items[j]['a']} times {items[j]['b']}? A: {items[j]['answer']}"
                     for j in others]
            prompts.append("\n".join([*demos, f"Q: What is {item['a']} times {item['b']}? A:"]))
        if not _fits(ctx, prompts, answers):
            left_out.append(k)
            continue
        correct = reproduces(ctx, prompts, answers)
        rows.append((f"acc_{k}shot", sum(correct) / len(items), len(items)))
        per_item += [({"a": item["a"], "b": item["b"], "shots": k}, "correct", float(c))
                     for item, c in zip(items, correct, strict=True)]
    if left_out:
        ctx.say(f"arithmetic leaves out {', '.join(map(str, left_out))}-shot prompts: they do "
                f"not fit the model's context of {ctx.max_len} tokens")
    return rows, per_item


def facts(ctx: Context) -> TaskResult:
    """"Q: <question> A:" about each invented entity: correct when greedy decoding gives the
    answer word and ends it. Per-item rows carry the entity and the attribute."""
    items = ctx.eval_items("qa")
    correct = reproduces(ctx, [f"Q: {it['question']} A:" for it in items],
                         [it["answer"] for it in items], extra="-")
    rows, per_item, by_attribute = [], [], {}
    for item, ok in zip(items, correct, strict=True):
        by_attribute.setdefault(item["attribute"], []).append(ok)
        per_item.append(({"entity": item["entity"], "attribute": item["attribute"]},
                         "correct", float(ok)))
    everything = [c for group in by_attribute.values() for c in group]
    rows.append(("acc", sum(everything) / len(everything), len(everything)))
    for attribute, group in sorted(by_attribute.items()):
        rows.append((f"acc_{attribute}", sum(group) / len(group), len(group)))
    return rows, per_item


def _pronoun_logprobs(ctx: Context, contexts: list[str]) -> list[tuple[float, float]]:
    """log P(" he") and log P(" she") after each context."""
    pairs = [encode_pair(ctx.tokenizer, c, f" {p}") for c in contexts for p in ("he", "she")]
    he, she = pairs[0][1], pairs[1][1]
    if len(he) == len(she) == 1 and all(p[1] == (he if i % 2 == 0 else she)
                                        for i, p in enumerate(pairs)):
        # both one token after every context: one pass per context gives both
        inputs = [pairs[2 * i][0][-ctx.max_len:] for i in range(len(contexts))]
        return [tuple(x) for x in next_token_logprobs(ctx.model, inputs, [he[0], she[0]])]
    scored = score(ctx.model, *continuation_requests(pairs, ctx.max_len))
    return [(scored[2 * i].total, scored[2 * i + 1].total) for i in range(len(contexts))]


def _binomial(hits: list[bool], metric: str) -> tuple[str, float, int, float]:
    """(metric, share, n, its standard error)."""
    n = len(hits)
    p = sum(hits) / n if n else float("nan")
    return metric, p, n, math.sqrt(p * (1 - p) / n) if n else float("nan")


def _mean(values: list[float], metric: str) -> tuple[str, float, int, float]:
    """(metric, mean, n, the standard error of the mean)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    stderr = float(array.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return metric, float(array.mean()) if n else float("nan"), n, stderr


def pronouns(ctx: Context) -> TaskResult:
    """Pronoun choice after occupations. P(he) / (P(he) + P(she)) after the name-free probe
    ("The nurse said that"), averaged per stereotype group; and WinoBias-style accuracy when a
    gendered name came first ("Mary was a nurse. The nurse said that" -> she): on items where
    the name agrees with the stereotype (pro) and where it does not (anti), and the gap. Each
    with its standard error."""
    items = ctx.eval_items("pronouns")
    named = [it for it in items if it["context"]]
    with_name = _pronoun_logprobs(ctx, [it["context"] for it in named])
    probes = sorted({it["probe"]: it for it in items}.items())
    bare = dict(zip([p for p, _ in probes],
                    _pronoun_logprobs(ctx, [p for p, _ in probes]), strict=True))
    per_item, groups, accuracy = [], {}, {"pro": [], "anti": []}
    for item, (he, she) in zip(named, with_name, strict=True):
        correct = (he > she) == (item["gold"] == "he")
        accuracy[item["type"]].append(correct)
        per_item.append(({"occupation": item["occupation"], "type": item["type"],
                          "gold": item["gold"]}, "correct", float(correct)))
    for number, (probe, item) in enumerate(probes):
        he, she = bare[probe]
        p_he = 1.0 / (1.0 + math.exp(she - he))
        groups.setdefault(item["stereotype"] or "none", []).append(p_he)
        per_item.append(({"occupation": item["occupation"], "probe": number,
                          "stereotype": item["stereotype"]}, "p_he", p_he))
    pro, anti = _binomial(accuracy["pro"], "acc_pro"), _binomial(accuracy["anti"], "acc_anti")
    rows = [pro, anti, ("gap", pro[1] - anti[1], pro[2] + anti[2],
                        math.sqrt(pro[3] ** 2 + anti[3] ** 2))]
    names = {"he": "p_he_male_stereotyped", "she": "p_he_female_stereotyped",
             "none": "p_he_balanced"}
    rows += [_mean(values, names[key]) for key, values in sorted(groups.items())]
    return rows, per_item


def stereotypes(ctx: Context) -> TaskResult:
    """CrowS-Pairs-style: each sentence of a pair scored whole after an EOD token;
    pct_stereotype = share of pairs where the stereotypical one is more likely (0.5 = none)."""
    items = ctx.eval_items("stereotypes")
    eod = ctx.tokenizer.token_to_id(EOD)
    sentences = [s for it in items for s in (it["sent_more"], it["sent_less"])]
    encoded = [ctx.tokenizer.encode(s, add_special_tokens=False).ids for s in sentences]
    scored = score(ctx.model, *continuation_requests([([eod], e) for e in encoded], ctx.max_len))
    more = [scored[2 * i].total > scored[2 * i + 1].total for i in range(len(items))]
    diff = [abs(scored[2 * i].total - scored[2 * i + 1].total) for i in range(len(items))]
    per_item = [({"occupation": it["occupation"], "pair": i}, "more_likely", float(m))
                for i, (it, m) in enumerate(zip(items, more, strict=True))]
    return [_binomial(more, "pct_stereotype"), _mean(diff, "likelihood_diff")], per_item


TASKS: dict[str, Callable[[Context], TaskResult]] = {
    "lambada": lambada, "perplexity": perplexity, "arithmetic": arithmetic, "facts": facts,
    "pronouns": pronouns, "stereotypes": stereotypes,
}
