"""The term-frequency study and `find`: counts against a brute-force scan of the tokens, the
join against hand computation, the files and rows on a micro run."""

import json

import numpy as np
import pytest

from lmsuite.analysis import frequency as freq
from lmsuite.analysis.find import find
from lmsuite.analysis.index import TokenIndex
from lmsuite.data.indexed import IndexedDataset
from lmsuite.data.tokenizer import load_tokenizer
from lmsuite.results import read_rows


@pytest.fixture(scope="module")
def data(built_data, tmp_path_factory):
    """A copy of the micro suite's data: the studies add their index to a dataset folder."""
    import shutil

    _, built = built_data
    copy = tmp_path_factory.mktemp("frequency") / "data"
    shutil.copytree(built, copy)
    return copy


def stream_neighbours(data_dir):
    """Per item: the tokens just before and after it in the document stream, found by walking
    the documents in order (independently of `data.order.item_neighbours`)."""
    docs = IndexedDataset(data_dir / "documents")
    ids = np.load(data_dir / "document_ids.npy").tolist()
    stream, start_of = [], {}
    for i, doc in enumerate(ids):
        start_of[doc] = len(stream)
        stream += docs[i].tolist()
    length = int(IndexedDataset(data_dir / "train").sizes[0])
    before, after = [], []
    for doc, offset in np.load(data_dir / "train_docs.npy").tolist():
        start = start_of[doc] + offset
        before.append(stream[start - 1] if start > 0 else -1)
        after.append(stream[start + length] if start + length < len(stream) else -1)
    return before, after


def brute_force(data_dir, term):
    """Whole-word occurrences of `term` per item, by walking every item's tokens."""
    tok = load_tokenizer(data_dir)
    train = IndexedDataset(data_dir / "train")
    before, after = stream_neighbours(data_dir)

    def text(t):
        return "" if t < 0 else tok.decode([t])

    found = []
    for i in range(len(train)):
        row = train[i].tolist()
        for query, needs_start in ((tok.encode(" " + term).ids, False), (tok.encode(term).ids,
                                                                        True)):
            m = len(query)
            for p in range(len(row) - m + 1):
                if row[p:p + m] != query:
                    continue
                nxt = text(row[p + m] if p + m < len(row) else after[i])
                if nxt[:1].isalnum() or nxt[:1] == "-":
                    continue
                prv = text(row[p - 1] if p > 0 else before[i])
                if needs_start and prv[-1:].isalnum():
                    continue
                found.append((i, p))
    return sorted(set(found))


@pytest.mark.parametrize("term", ["12", "3", "7"])
def test_term_occurrences_equal_a_brute_force_scan(data, term):
    data_dir = data / "standard"
    from lmsuite.data.order import item_neighbours

    index = TokenIndex.open(data_dir, progress=False)
    counter = freq.TermCounter(index, load_tokenizer(data_dir), item_neighbours(data_dir))
    positions = counter.occurrences(term)
    got = [(int(p) // index.sample_len, int(p) % index.sample_len) for p in positions]
    expected = brute_force(data_dir, term)
    assert got == expected and len(expected) > 10


def test_an_entity_name_is_counted_whole(data):
    data_dir = data / "standard"
    entity = json.loads((data_dir / "corpus.meta" / "eval" / "qa.jsonl").read_text()
                        .splitlines()[0])["entity"]
    index = TokenIndex.open(data_dir, progress=False)
    from lmsuite.data.order import item_neighbours

    counter = freq.TermCounter(index, load_tokenizer(data_dir), item_neighbours(data_dir))
    got = [(int(p) // index.sample_len, int(p) % index.sample_len)
           for p in counter.occurrences(entity)]
    assert got == brute_force(data_dir, entity) and got


def test_counts_are_cumulative_in_training_order():
    positions = np.array([0, 5, 40, 41, 200, 3000])
    steps = freq.steps_of(positions, sample_len=33, batch_size=8)  # 264 tokens a step
    assert steps.tolist() == [0, 0, 0, 0, 0, 11]
    assert freq.cumulative(steps, [0, 1, 11, 12]).tolist() == [0, 5, 5, 6]


def test_delta_is_the_top_tenth_minus_the_bottom_tenth():
    accuracy = {str(t): t / 100 for t in range(100)}
    count = {str(t): 100 - t for t in range(100)}  # the most frequent are the least accurate
    value, n = freq.delta(accuracy, count)
    assert n == 100 and value == pytest.approx(np.mean(range(10)) / 100 -
                                               np.mean(range(90, 100)) / 100)


def test_the_study_writes_delta_rows_and_curves(small_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"  # a copy: the shared fixture's run stays as the other tests expect
    shutil.copytree(small_run[1], run_dir)
    path = freq.frequency(str(run_dir / "s1"), steps="10,20", progress=False)
    rows = [r for r in read_rows(path) if r["task"] == "frequency"]
    metrics = {(r["step"], r["metric"]) for r in rows}
    assert (20, "delta_facts") in metrics and (10, "delta_arithmetic_0shot") in metrics
    curves = json.loads((run_dir / "results" / "frequency" / "s1.json").read_text())
    assert set(curves["steps"]) == {"10", "20"}
    counts = json.loads((run_dir / "results" / "frequency" / "counts-standard.json")
                        .read_text())
    assert counts["steps"] == [0, 1, 2, 4, 8, 10, 16, 20]
    assert len(counts["operands"]["7"]) == 8 and counts["operands"]["7"][0] == 0
    before = path.read_text()
    freq.frequency(str(run_dir / "s1"), steps="10,20", progress=False)
    assert path.read_text() == before


def test_find_lists_occurrences_in_training_order_like_a_brute_force_scan(data):
    found = find(data / "standard", "lantern", limit=5)
    tok = load_tokenizer(data / "standard")
    train = IndexedDataset(data / "standard" / "train")
    expected = []
    for query in (tok.encode("lantern").ids, tok.encode(" lantern").ids):
        for i in range(len(train)):
            row = train[i].tolist()
            expected += [(i, p) for p in range(len(row) - len(query) + 1)
                         if row[p:p + len(query)] == query]
    expected.sort()
    assert found.count == len(expected) > 0
    assert [(o.item, o.offset) for o in found.occurrences] == expected[:5]
    assert found.first_step == expected[0][0] // 8
    assert all("lantern" in o.text for o in found.occurrences)
