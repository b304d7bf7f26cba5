"""Near-duplicate removal with MinHash LSH (rensa) on word n-gram shingles; keeps the first."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np
import rensa


def shingles(text: str, n: int) -> list[str]:
    """Lower-cased word n-grams; a text shorter than n words is one shingle."""
    words = text.lower().split()
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def lsh_bands(threshold: float, num_perm: int, recall: float = 0.995) -> int:
    """The fewest bands (most rows per band, so fewest false candidates) for which a pair of
    similarity `threshold` becomes a candidate with probability >= `recall`."""
    for bands in sorted(b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands
    return num_perm


@dataclass
class NearDuplicateFilter:
    """Online filter: a document is dropped when an earlier kept one is at least `threshold`
    similar (estimated Jaccard of shingle sets). Order in, decisions out: deterministic."""

    threshold: float = 0.87
    """Jaccard similarity at or above which a document is a near-duplicate."""
    ngram: int = 5
    """Words per shingle."""
    num_perm: int = 128
    """MinHash permutations."""
    bands: int = 0
    """LSH bands; 0 picks the fewest that still find a pair at the threshold with p >= 0.995
    (16 bands of 8 rows for 0.87 and 128 permutations)."""
    seed: int = 1
    """Seed of the MinHash permutations."""
    removed: dict[int, tuple[int, float]] = field(default_factory=dict)
    """Dropped document -> (the kept document it duplicates, estimated Jaccard)."""

    def __post_init__(self) -> None:
        if self.bands == 0:
            self.bands = lsh_bands(self.threshold, self.num_perm)
        self._lsh = rensa.RMinHashLSH(threshold=self.threshold, num_perm=self.num_perm,
                                      num_bands=self.bands)
        self._digests = np.zeros((1024, self.num_perm), np.uint32)
        self._row: dict[int, int] = {}

    def add(self, key: int, text: str) -> int | None:
        """Keep document `key` and return None, or return the earlier kept one it duplicates."""
        minhash = rensa.RMinHash(num_perm=self.num_perm, seed=self.seed)
        minhash.update(shingles(text, self.ngram))
        digest = np.asarray(minhash.digest(), np.uint32)
        for candidate in sorted(self._lsh.query(minhash)):
            similarity = float(np.mean(self._digests[self._row[candidate]] == digest))
            if similarity >= self.threshold:
                self.removed[key] = (candidate, similarity)
                return candidate
        if len(self._row) == len(self._digests):
            self._digests = np.concatenate([self._digests, np.zeros_like(self._digests)])
        self._digests[len(self._row)] = digest
        self._row[key] = len(self._row)
        self._lsh.insert(key, minhash)
        return None

    def describe(self) -> dict:
        """The parameters, for the manifest."""
        return {"method": "minhash-lsh", "library": f"rensa {version('rensa')}",
                "threshold": self.threshold, "ngram": self.ngram, "num_perm": self.num_perm,
                "bands": self.bands, "seed": self.seed}


def deduplicate(texts: Iterable[str], threshold: float = 0.87) -> tuple[list[int], dict]:
    """Indices of the documents kept, and {dropped: (kept duplicate, similarity)}."""
    f = NearDuplicateFilter(threshold=threshold)
    kept = [i for i, text in enumerate(texts) if f.add(i, text) is None]
    return kept, f.removed
