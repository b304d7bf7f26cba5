import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lmsuite.config import SyntheticConfig
from lmsuite.data.synthetic import (
    FEMALE_SKEWED,
    MALE_SKEWED,
    NEAR_COPY_TAILS,
    generate_corpus,
    meta_folder,
    write_corpus,
)


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(SyntheticConfig(), 10000, seed=11)


def folder_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_files_and_another_seed_does_not(tmp_path):
    cfg = SyntheticConfig(entities=50, eval_items=30)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_corpus(tmp_path / name / "corpus.jsonl", cfg, 800, seed)
    a, b, c = (folder_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a[Path("corpus.jsonl")] != c[Path("corpus.jsonl")]
    meta = Path(meta_folder("corpus.jsonl").name)
    assert {meta / "documents.json", meta / "ground_truth.json",
            meta / "eval" / "lambada.jsonl", meta / "eval" / "qa.jsonl"} <= set(a)


def test_writing_again_replaces_the_metadata_whole_even_after_a_killed_write(tmp_path):
    cfg = SyntheticConfig(entities=50, eval_items=30)
    out = tmp_path / "corpus.jsonl"
    write_corpus(out, cfg, 800, 5)
    meta = meta_folder(out)
    meta.rename(tmp_path / ".corpus.meta.old-999999")  # killed between its two renames
    write_corpus(out, cfg, 800, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "corpus.meta"]
    write_corpus(tmp_path / "again.jsonl", cfg, 800, 6)
    assert folder_bytes(meta) == folder_bytes(meta_folder(tmp_path / "again.jsonl"))


def without_tail(text):
    head, _, last = text.rpartition("\n")
    return head if last in NEAR_COPY_TAILS else text


def test_document_metadata_matches_the_planted_copies(corpus):
    texts, meta, truth, _ = corpus
    assert len(texts) == 10000
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(meta):
        if m["group"] >= 0:
            groups.setdefault(m["group"], []).append(i)
    assert len(groups) == truth["duplicate_groups"]
    for members in groups.values():
        assert all(meta[i]["copies"] == len(members) for i in members)
        assert not meta[members[0]]["is_copy"]
        assert all(meta[i]["is_copy"] for i in members[1:])
        # Exact copies, or the same text plus a line of boilerplate.
        assert len({without_tail(texts[i]) for i in members}) == 1
    extra = sum(len(m) - 1 for m in groups.values())
    assert extra == round(10000 * SyntheticConfig().duplicate_share)
    assert max(len(m) for m in groups.values()) > 10  # heavy-tailed copy counts


def test_entity_and_operand_counts_are_what_the_documents_hold_copies_included(corpus):
    texts, meta, truth, items = corpus
    facts = [t for t, m in zip(texts, meta, strict=True) if m["kind"] == "fact"]
    assert any(m["kind"] == "fact" and m["is_copy"] for m in meta)
    for entity, count in list(truth["entity_counts"].items())[:25]:
        assert sum(f"{entity} " in t or t.startswith(entity) for t in facts) == count
    assert all(q["count"] == truth["entity_counts"][q["entity"]] for q in items["qa"])
    x1, x2 = Counter(), Counter()
    for t, m in zip(texts, meta, strict=True):
        if m["kind"] == "arithmetic":
            for a, b in re.findall(r"What is (\d+) times (\d+)\?", t):
                x1[a] += 1
                x2[b] += 1
            for a, b in re.findall(r"bought (\d+) boxes with (\d+) ", t):
                x1[a] += 1
                x2[b] += 1
    assert {k: v for k, v in truth["operand_counts"]["x1"].items() if v} == dict(x1)
    assert {k: v for k, v in truth["operand_counts"]["x2"].items() if v} == dict(x2)
    counts = sorted(truth["operand_counts"]["x1"].values())
    assert counts[-1] > 5 * counts[len(counts) // 2]  # Zipf: a few operands are common


def test_occupation_pronoun_skew_is_the_configured_one(corpus):
    texts, meta, truth, _ = corpus
    he, total = Counter(), Counter()
    for text, m in zip(texts, meta, strict=True):
        if m["kind"] == "story" and m["lang"] == "en" and not m["is_copy"]:
            occ = re.search(r"(?:was|lived|as) an? (\w+)", text).group(1)
            total[occ] += 1
            he[occ] += bool(re.search(r"\b(he|his|him|himself)\b", text.lower()))
    for occ in MALE_SKEWED + FEMALE_SKEWED:
        assert total[occ] > 100
        assert he[occ] / total[occ] == pytest.approx(truth["occupation_p_he"][occ], abs=0.07)


def test_spanish_stories_are_in_the_mix(corpus):
    texts, meta, _, _ = corpus
    spanish = [t for t, m in zip(texts, meta, strict=True) if m["lang"] == "es"]
    assert len(spanish) > 100 and any("á" in t or "é" in t or "í" in t for t in spanish)


def test_evaluation_items_come_from_documents_never_in_the_corpus(corpus):
    texts, _, truth, items = corpus
    corpus_text = set(texts)
    for item in items["lambada"]:
        assert item["text"] not in corpus_text
        context, last = item["text"].rsplit(" ", 1)
        assert last == item["target"] and item["target"] in context
    for item in items["qa"]:
        assert item["answer"] == truth["entity_facts"][item["entity"]][item["attribute"]]
    for item in items["arithmetic"]:
        assert item["answer"] == item["a"] * item["b"] and 1 <= item["b"] <= 50
    assert {i["type"] for i in items["pronouns"]} == {"pro", "anti", None}
    for pair in items["stereotypes"]:
        assert pair["sent_more"] != pair["sent_less"]
    json.dumps(items)  # plain data
