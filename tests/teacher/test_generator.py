"""RationaleGenerator and its cache: exact records, no request for cached work, resume, shards, self-consistency."""

import json

import pytest
from teacher_helpers import API_KEY, cache_lines, nli_examples

from stepdistill.teacher.generator import (CacheError, RationaleGenerator, attach_rationales, load_rationales,
                                           merge_caches, read_cache, shard_of)
from stepdistill.teacher.teachers import GenerationParams, OpenAITeacher


def _generator(server, path, task="esnli", **options):
    teacher = OpenAITeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, timeout=1.0, backoff_base=0.01,
                            max_attempts=3)
    return RationaleGenerator(task, teacher, path, progress=False, **{"concurrency": 4, **options})


def test_record_contents_and_rerun_sends_nothing(serve, tmp_path):
    server = serve(outputs={"1": "Running is a way of moving, and a dog is an animal.\nAnswer: entailment\n\nPremise: x"})
    path = tmp_path / "cache.jsonl"
    result = _generator(server, path).run(nli_examples(3))
    lines = cache_lines(path)
    assert len(lines) == 3 and sorted(r["id"] for r in lines) == ["0", "1", "2"]
    record = next(r for r in lines if r["id"] == "1")
    assert set(record) == {"id", "key", "prompt_hash", "teacher", "model", "params", "gold", "status", "error",
                           "error_detail", "raw_output", "finish_reason", "rationale", "label", "usage", "cost",
                           "attempts", "attempt_errors", "created", "gold_filter"}
    assert (record["teacher"], record["model"], record["status"], record["error"]) == ("openai", "gpt-4o-mini", "ok", None)
    assert record["rationale"] == "Running is a way of moving, and a dog is an animal."
    assert record["label"] == "entailment" and record["gold"] == "entailment"
    assert record["raw_output"].endswith("Premise: x")
    assert record["params"] == {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "n": 1,
                                "stop": ["\nPremise:"], "seed": None, "endpoint": "chat"}
    assert len(record["prompt_hash"]) == 16 and record["attempts"] == 1
    assert [r["id"] for r in result.records] == ["0", "1", "2"]  # results in example order
    assert server.requests == 3

    again = _generator(server, path).run(nli_examples(3))
    assert server.requests == 3 and again.summary.cached == 3 and again.summary.generated == 0
    assert again.records == [{**r, "gold_filter": False} for r in result.records]
    assert len(cache_lines(path)) == 3

    # a different generation parameter, prompt or example text is different work
    _generator(server, path, params=GenerationParams(max_new_tokens=64)).run(nli_examples(3))
    assert server.requests == 6
    changed = nli_examples(3)
    changed[0]["hypothesis"] = "A dog is asleep."
    _generator(server, path).run(changed)
    assert server.requests == 7
    custom = tmp_path / "mine.txt"
    custom.write_text("Premise: {premise}\nHypothesis: {hypothesis}\nReasonings:")
    _generator(server, path, template=custom).run(nli_examples(2))
    assert server.requests == 9
    assert len(read_cache(path)[0]) == 9


def test_partial_final_line_is_dropped_and_redone(serve, tmp_path):
    server = serve()
    path = tmp_path / "cache.jsonl"
    _generator(server, path).run(nli_examples(3))
    lines = path.read_text().splitlines(keepends=True)
    kept, lost = lines[:2], json.loads(lines[2])["id"]
    path.write_text("".join(kept) + lines[2][:40])  # as if killed while writing the third record
    records, partial = read_cache(path)
    assert len(records) == 2 and partial == 40
    result = _generator(server, path).run(nli_examples(3))
    assert result.summary.partial_line_dropped and result.summary.cached == 2 and result.summary.generated == 1
    assert server.per_marker[lost] == 2 and server.requests == 4
    final = cache_lines(path)  # every line parses: the fragment is gone
    assert sorted(r["id"] for r in final) == ["0", "1", "2"]


def test_corrupt_cache_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"id": "0", "key": "a"}\nnot json\n{"id": "1", "key": "b"}\n')
    with pytest.raises(CacheError, match=r"cache\.jsonl: line 2: not a JSON record"):
        read_cache(path)
    path.write_text('{"id": "0"}\n')
    with pytest.raises(CacheError, match=r"line 1: not a rationale record \(needs fields 'id' and 'key'\)"):
        read_cache(path)


def test_shards_partition_the_examples_and_merge(serve, tmp_path):
    server = serve(faults={"5": ["500"] * 3})
    examples = nli_examples(40)
    shard_paths = [tmp_path / f"shard{i}.jsonl" for i in range(3)]
    for i, path in enumerate(shard_paths):
        _generator(server, path, shard=f"{i}/3").run(examples)
    ids = [sorted(r["id"] for r in cache_lines(path)) for path in shard_paths]
    assert sorted(sum(ids, [])) == sorted(str(i) for i in range(40))  # disjoint and complete
    assert all(ids) and ids[0] == sorted(str(i) for i in range(40) if shard_of(str(i), 3) == 0)
    # merge: one record per key; a success elsewhere replaces a failure
    failed_shard = shard_paths[shard_of("5", 3)]
    retry = tmp_path / "retry.jsonl"
    _generator(server, retry, retry_failed=True).run([examples[5]])
    stats = merge_caches([*shard_paths, retry, shard_paths[0]], tmp_path / "all.jsonl")
    merged = cache_lines(tmp_path / "all.jsonl")
    assert len(merged) == 40 == stats["records"] and len({r["key"] for r in merged}) == 40
    assert next(r for r in merged if r["id"] == "5")["status"] == "ok"
    assert next(r for r in cache_lines(failed_shard) if r["id"] == "5")["status"] == "failed"
    assert stats["duplicates"] == 1 + len(ids[0])
    # the merged cache serves a full run without a request
    before = server.requests
    result = _generator(server, tmp_path / "all.jsonl").run(examples)
    assert server.requests == before and result.summary.cached == 40 and result.summary.ok == 40
    with pytest.raises(ValueError, match="shard must look like i/n"):
        _generator(server, tmp_path / "x.jsonl", shard="2of3")


def test_retry_failed_asks_again_only_when_told(serve, tmp_path):
    server = serve(faults={"1": ["500", "500", "500"]})
    path = tmp_path / "cache.jsonl"
    first = _generator(server, path).run(nli_examples(3))
    assert dict(first.summary.request_failures) == {"http_500": 1} and server.requests == 5
    _generator(server, path).run(nli_examples(3))
    assert server.requests == 5  # a recorded failure is cached work too
    again = _generator(server, path, retry_failed=True).run(nli_examples(3))
    assert server.requests == 6 and again.summary.ok == 3 and not again.summary.request_failures
    assert load_rationales(path)["1"]["status"] == "ok"  # the later record wins


def test_self_consistency_majority_vote_and_gold_filter(serve, tmp_path):
    def out(reason, label):
        return f"{reason}\nAnswer: {label}"

    outputs = {
        "0": [out("r1", "entailment"), out("r2", "neutral"), out("r3", "entailment"), out("r4", "nonsense"),
              out("r5", "entailment")],
        "1": [out("s1", "neutral"), out("s2", "contradiction"), out("s3", "contradiction"), "no answer here",
              out("s5", "neutral")],
        "2": ["nothing"] * 5,
    }
    server = serve(outputs=outputs)
    params = GenerationParams(n=5, temperature=0.7)
    examples = nli_examples(3)
    examples[1]["label"] = "contradiction"
    result = _generator(server, tmp_path / "sc.jsonl", params=params).run(examples)
    assert server.bodies[0]["n"] == 5 and server.bodies[0]["temperature"] == 0.7 and server.requests == 3
    r0, r1, r2 = result.records
    assert (r0["label"], r0["rationales"], r0["votes"]) == ("entailment", ["r1", "r3", "r5"], {"entailment": 3, "neutral": 1})
    assert r0["rationale"] == "r1" and len(r0["outputs"]) == 5
    # a tie goes to the label seen first
    assert (r1["label"], r1["rationales"], r1["votes"]) == ("neutral", ["s1", "s5"], {"neutral": 2, "contradiction": 2})
    assert (r2["status"], r2["error"], r2["votes"]) == ("parse_error", "no_answer", {})
    assert result.summary.agree == 1 and result.summary.filtered == 0

    filtered = _generator(server, tmp_path / "sc.jsonl", params=params, filter_gold=True).run(examples)
    assert server.requests == 3  # the filter needs no new request
    f0, f1, _ = filtered.records
    assert f0["status"] == "ok" and f0["rationales"] == ["r1", "r3", "r5"]
    assert (f1["status"], f1["error"], f1["rationale"], f1["rationales"]) == ("filtered", "disagrees_with_gold", None, [])
    assert filtered.summary.filtered == 1 and filtered.summary.rationales_dropped == 2 and filtered.summary.ok == 1
    with pytest.raises(ValueError, match="needs temperature > 0"):
        GenerationParams(n=3)


def test_self_consistency_groups_equations_by_value(serve, tmp_path):
    outputs = {"0": ["Two and three. The answer is (2.0 + 3.0).", "Five. The answer is (5.0).",
                     "Wrong. The answer is (2.0 * 3.0)."]}
    server = serve(outputs=outputs)
    examples = [{"id": 0, "Body": "Ann has 2 apples and gets 3 more [ex:0].", "Question": "How many?",
                 "Equation": "( 2.0 + 3.0 )"}]
    result = _generator(server, tmp_path / "svamp.jsonl", task="svamp",
                        params=GenerationParams(n=3, temperature=1.0)).run(examples)
    record = result.records[0]
    assert record["label"] == "(2.0 + 3.0)" and record["rationales"] == ["Two and three.", "Five."]
    assert result.summary.agree == 1
    assert server.bodies[0]["stop"] == ["\nQ:"]


def test_attach_rationales_to_data_records(serve, tmp_path):
    server = serve(faults={"1": ["500"] * 3})
    path = tmp_path / "cache.jsonl"
    _generator(server, path).run(nli_examples(2))
    data_records = [{"id": str(i), "input": "x", "label": "entailment", "teacher_output": None, "rationale": None,
                     "teacher_label": None, "teacher_error": "missing", "fields": {}} for i in range(3)]
    joined = attach_rationales(data_records, load_rationales(path))
    assert joined[0]["rationale"] == "The hypothesis restates part of example 0." and joined[0]["teacher_error"] is None
    assert joined[0]["teacher_label"] == "entailment" and joined[0]["teacher_output"].endswith("entailment")
    assert (joined[1]["rationale"], joined[1]["teacher_error"]) == (None, "http_500")
    assert joined[2]["teacher_error"] == "missing" and data_records[0]["rationale"] is None


def test_examples_from_the_data_layer_shape(serve, tmp_path):
    """Records shaped like stepdistill.data's (id/label/fields) work as well as raw examples."""
    server = serve()
    raw = nli_examples(2)
    records = [{"id": str(e["id"]), "input": "...", "label": e["label"], "choices": None, "teacher_output": None,
                "rationale": None, "teacher_label": None, "teacher_error": None, "fields": e} for e in raw]
    from_records = _generator(server, tmp_path / "a.jsonl").run(records)
    from_raw = _generator(server, tmp_path / "b.jsonl").run(raw)
    assert [r["key"] for r in from_records.records] == [r["key"] for r in from_raw.records]
    assert from_records.summary.agree == 2
    with pytest.raises(ValueError, match="example 1: duplicate id 0"):
        _generator(server, tmp_path / "c.jsonl").run([raw[0], raw[0]])
    with pytest.raises(ValueError, match="example 0: missing field 'id'"):
        _generator(server, tmp_path / "c.jsonl").run([{"premise": "p", "hypothesis": "h"}])
