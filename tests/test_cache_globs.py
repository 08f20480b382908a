"""A glob over rationale caches (``--rationales``, ``inspect --cache``) skips the Batch API state log that
`generate --teacher openai-batch:...` writes next to its cache (CACHE.batches.jsonl)."""

from __future__ import annotations

import json

import pytest

from stepdistill.insights.items import cache_paths as inspect_cache_paths
from stepdistill.rationales import DataError, cache_paths


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_globs_skip_the_batch_state_log(tmp_path):
    _write(tmp_path / "esnli_train_0.jsonl", [{"id": "a", "key": "k"}])
    _write(tmp_path / "esnli_train_batch.jsonl", [{"id": "b", "key": "k"}])
    _write(tmp_path / "esnli_train_batch.jsonl.batches.jsonl", [{"input_file_id": "file-1"}])
    expected = [tmp_path / "esnli_train_0.jsonl", tmp_path / "esnli_train_batch.jsonl"]
    assert cache_paths(str(tmp_path / "esnli_train_*.jsonl")) == expected
    assert inspect_cache_paths(str(tmp_path / "esnli_train_*.jsonl")) == expected
    # named outright, the state log is read (and refused by the record check): only globs skip it
    assert inspect_cache_paths(str(tmp_path / "esnli_train_batch.jsonl.batches.jsonl")) == [
        tmp_path / "esnli_train_batch.jsonl.batches.jsonl"]
    with pytest.raises(DataError, match="no rationale cache matches"):
        cache_paths(str(tmp_path / "*.batches.jsonl"))
