"""Near-duplicate texts: word-set Jaccard >= a threshold, found in O(n) with MinHash LSH (datasketch), each
candidate pair verified exactly, so a reported pair is always a true one.

Used by ``inspect`` (near-duplicate rationales) and by the teacher's synthesis (new examples close to real ones are
dropped); it sits below both, next to the tasks.
"""

from __future__ import annotations

import re

from .tasks import normalize_text

MAX_CANDIDATES = 100  # exact checks per text: bounds the work when many texts share LSH buckets


def word_set(text: str) -> frozenset[str]:
    """The set of lower-case words (``\\w+``) of a text: what near-duplicate Jaccard compares."""
    return frozenset(re.findall(r"\w+", text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate_pairs(texts: list[str], threshold: float = 0.9, num_perm: int = 128) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of texts whose normalised forms differ but whose word sets have Jaccard >= threshold.

    Texts equal after ``normalize_text`` are exact duplicates, not near ones: only the first text of each such group
    is hashed, and a pair names those first texts (it stands for both whole groups). MinHash LSH may miss a pair whose Jaccard is close to the threshold (with 128 permutations and candidates
    from threshold - 0.1, rarely)."""
    from datasketch import MinHash, MinHashLSH

    first_of: dict[str, int] = {}
    for index, text in enumerate(texts):
        first_of.setdefault(normalize_text(text), index)
    representatives = [index for index in first_of.values() if word_set(texts[index])]
    sets = {index: word_set(texts[index]) for index in representatives}
    # candidates from a lower LSH threshold: few pairs at the real threshold are missed, and each is checked exactly
    lsh = MinHashLSH(threshold=max(0.5, threshold - 0.1), num_perm=num_perm)
    hashes = MinHash.bulk([[w.encode() for w in sorted(sets[i])] for i in representatives], num_perm=num_perm)
    pairs = set()
    for index, minhash in zip(representatives, hashes):
        for other in sorted(lsh.query(minhash))[:MAX_CANDIDATES]:
            if jaccard(sets[index], sets[other]) >= threshold:
                pairs.add((min(index, other), max(index, other)))
        lsh.insert(index, minhash)
    return sorted(pairs)


class NearDuplicateIndex:
    """Texts added under a name; :meth:`find` says which one a new text duplicates, exactly (equal after
    ``normalize_text``) or nearly (word-set Jaccard >= ``threshold``, MinHash LSH candidates checked exactly).

    A text whose word set is empty is only ever an exact duplicate. Candidates per query are capped at
    MAX_CANDIDATES, so a query's work is bounded whatever the texts.
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = 128):
        from datasketch import MinHashLSH

        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold, self.num_perm = threshold, num_perm
        self.exact: dict[str, str] = {}
        self.sets: dict[int, tuple[str, frozenset[str]]] = {}
        self.lsh = MinHashLSH(threshold=max(0.5, threshold - 0.1), num_perm=num_perm)

    def __len__(self) -> int:
        return len(self.exact)

    def _minhashes(self, sets: list[frozenset[str]]):
        from datasketch import MinHash

        return MinHash.bulk([[w.encode() for w in sorted(words)] for words in sets], num_perm=self.num_perm)

    def add_many(self, items: list[tuple[str, str]]) -> None:
        """Add (name, text) pairs; a text already in the index (exactly) keeps its first name."""
        fresh = []
        for name, text in items:
            normal = normalize_text(text)
            if normal in self.exact:
                continue
            self.exact[normal] = name
            words = word_set(text)
            if words:
                fresh.append((name, words))
        for (name, words), minhash in zip(fresh, self._minhashes([words for _, words in fresh])):
            index = len(self.sets)
            self.sets[index] = (name, words)
            self.lsh.insert(index, minhash)

    def add(self, name: str, text: str) -> None:
        self.add_many([(name, text)])

    def find(self, text: str) -> tuple[str, str] | None:
        """(``"exact"`` or ``"near"``, the name of the text it duplicates), or None when it is new."""
        name = self.exact.get(normalize_text(text))
        if name is not None:
            return "exact", name
        words = word_set(text)
        if not words or not self.sets:
            return None
        for other in sorted(self.lsh.query(self._minhashes([words])[0]))[:MAX_CANDIDATES]:
            other_name, other_words = self.sets[other]
            if jaccard(words, other_words) >= self.threshold:
                return "near", other_name
        return None
