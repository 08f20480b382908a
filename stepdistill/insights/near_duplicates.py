"""Moved to :mod:`stepdistill.near_duplicates` (a lower layer: the teacher's synthesis uses it too)."""

from ..near_duplicates import MAX_CANDIDATES, NearDuplicateIndex, jaccard, near_duplicate_pairs, word_set  # noqa: F401
