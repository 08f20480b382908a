"""Near-duplicate rationales: word-set Jaccard >= a threshold, found in O(n) with MinHash LSH (datasketch), each
candidate pair verified exactly, so a reported pair is always a true one."""

from __future__ import annotations

import re

from ..tasks import normalize_text

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
