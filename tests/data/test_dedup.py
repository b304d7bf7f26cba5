import numpy as np
import pytest

from lmsuite.config import SyntheticConfig
from lmsuite.data.dedup import NearDuplicateFilter, deduplicate, shingles
from lmsuite.data.synthetic import generate_corpus


def test_shingles_are_lowercased_word_ngrams():
    assert shingles("A b C d", 3) == ["a b c", "b c d"]
    assert shingles("too short", 5) == ["too short"]


@pytest.mark.parametrize("seed", [1234, 99])
def test_removes_the_planted_copies_and_nothing_else(seed):
    texts, meta, _, _ = generate_corpus(SyntheticConfig(), 20000, seed)
    kept, removed = deduplicate(texts)
    planted = np.array([m["is_copy"] for m in meta])
    dropped = np.zeros(len(texts), bool)
    dropped[list(removed)] = True
    assert planted.sum() == 1000 and sorted(kept) == sorted(set(range(len(texts))) - set(removed))
    precision = (dropped & planted).sum() / dropped.sum()
    recall = (dropped & planted).sum() / planted.sum()
    assert precision >= 0.99 and recall >= 0.99, (precision, recall)
    near = np.array([m["near_copy"] for m in meta])
    assert (dropped & near).sum() >= 0.98 * (planted & near).sum()  # not only exact copies


def test_keeps_the_first_of_each_cluster_and_is_deterministic():
    base = " ".join(f"word{i}" for i in range(200))
    texts = ["unrelated text " * 30, base, base + " tail", "other " * 40, base]
    first = NearDuplicateFilter()
    decisions = [first.add(i, t) for i, t in enumerate(texts)]
    assert decisions == [None, None, 1, None, 1]
    again = NearDuplicateFilter()
    assert [again.add(i, t) for i, t in enumerate(texts)] == decisions
    assert first.removed == again.removed and first.removed[4] == (1, 1.0)


def test_threshold_decides():
    a = " ".join(f"w{i}" for i in range(100))
    b = " ".join(f"w{i}" for i in range(80)) + " " + " ".join(f"x{i}" for i in range(20))
    assert deduplicate([a, b], threshold=0.95)[0] == [0, 1]
    assert deduplicate([a, b], threshold=0.5)[0] == [0]


def test_bands_adapt_to_the_threshold():
    from lmsuite.data.dedup import lsh_bands

    assert lsh_bands(0.87, 128) == 16
    assert lsh_bands(0.5, 128) > 16
