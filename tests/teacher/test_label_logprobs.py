"""label_logprobs in the cache (issue 24): from an API's top_logprobs on the loopback server (chat and completions
formats, resume), from self-consistency votes, and the refusals."""

import json
import math

import pytest
from cli_helpers import error_line
from teacher_helpers import API_KEY, batch_api_records, cache_lines, nli_examples, write_jsonl

from stepdistill.teacher.generator import RationaleGenerator
from stepdistill.teacher.label_scores import from_top_logprobs
from stepdistill.teacher.teachers import GenerationParams, OpenAITeacher

RATIONALE = "The dog moves."
OUTPUTS = {"0": f"{RATIONALE}\nAnswer: entailment", "1": "A park is not a cat.\nAnswer: Neutral", "2": "No answer."}
TOP = [(" entail", -0.2), (" neutral", -2.0), (" Neutral", -3.0), (" contr", -3.5), (" maybe", -4.0)]
LOGPROBS = {
    # "entail" + "ment": the label in two tokens; " neutral" and " Neutral" both parse as neutral; " contr" starts
    # contradiction and leaves the generated path; "ments" and " maybe" are no label
    "0": [(RATIONALE, -0.5, []), ("\n", -0.1, []), ("Answer", -0.1, []), (":", -0.01, []), (" entail", -0.2, TOP),
          ("ment", -0.05, [("ment", -0.05), ("ments", -3.5)])],
    # the label starts inside a token (": Neutral"), the generated token is not among the alternatives
    "1": [("A park is not a cat.\nAnswer", -0.3, []), (": Neutral", -0.7, [(": contradiction", -1.2), (":", -3.0)])],
}


def _generate(server, tmp_path, params, examples=None, endpoint="chat"):
    teacher = OpenAITeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, timeout=2, endpoint=endpoint)
    generator = RationaleGenerator("esnli", teacher, tmp_path / f"{endpoint}.jsonl", params=params, progress=False)
    return generator.run(examples or nli_examples(3))


def _expected_example_0(k):
    entailment = math.exp(-0.2 - 0.05)
    neutral = math.exp(-2.0) + (math.exp(-3.0) if k >= 3 else 0.0)
    contradiction = math.exp(-3.5) if k >= 4 else 0.0
    rest = 1 - entailment - neutral - contradiction
    return {"entailment": math.log(entailment), "neutral": math.log(neutral),
            "contradiction": math.log(contradiction) if contradiction else math.log(rest)}, math.log(rest)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_top_logprobs_from_the_loopback_server_map_to_labels(serve, tmp_path, endpoint):
    server = serve(outputs=OUTPUTS, logprobs=LOGPROBS)
    result = _generate(server, tmp_path, GenerationParams(label_logprobs=True, top_logprobs=4), endpoint=endpoint)
    body = server.bodies[0]
    assert (body["logprobs"], body.get("top_logprobs")) == ((True, 4) if endpoint == "chat" else (4, None))
    by_id = {record["id"]: record for record in result.records}
    want, rest = _expected_example_0(4)
    assert by_id["0"]["label_logprobs_source"] == "top_logprobs" and by_id["0"]["label"] == "entailment"
    assert by_id["0"]["label_logprobs"] == pytest.approx(want, abs=1e-12)
    assert by_id["0"]["label_logprob_rest"] == pytest.approx(rest, abs=1e-12)
    # example 1: neutral exp(-0.7), contradiction exp(-1.2); entailment has no mass: it gets the whole rest
    rest_1 = 1 - math.exp(-0.7) - math.exp(-1.2)
    assert by_id["1"]["label"] == "neutral" and by_id["1"]["label_logprobs"] == pytest.approx(
        {"entailment": math.log(rest_1), "neutral": -0.7, "contradiction": -1.2}, abs=1e-12)
    assert by_id["1"]["label_logprob_rest"] == pytest.approx(math.log(rest_1), abs=1e-12)
    # no parsed label, no distribution
    assert by_id["2"]["status"] == "parse_error" and "label_logprobs" not in by_id["2"]
    # what is on disk is what was returned; a rerun sends nothing and reads the same fields back
    on_disk = {record["id"]: record for record in cache_lines(tmp_path / f"{endpoint}.jsonl")}
    assert on_disk["0"]["label_logprobs"] == by_id["0"]["label_logprobs"]
    again = _generate(server, tmp_path, GenerationParams(label_logprobs=True, top_logprobs=4), endpoint=endpoint)
    assert server.requests == 3 and again.summary.cached == 3
    assert [r.get("label_logprobs") for r in again.records] == [r.get("label_logprobs") for r in result.records]


def test_fewer_alternatives_leave_a_candidate_the_rest(serve, tmp_path):
    server = serve(outputs=OUTPUTS, logprobs=LOGPROBS)
    record = _generate(server, tmp_path, GenerationParams(label_logprobs=True, top_logprobs=2),
                       nli_examples(1)).records[0]
    want, rest = _expected_example_0(2)  # " Neutral" and " contr" are cut off: contradiction gets log(rest / 1)
    assert record["label_logprobs"] == pytest.approx(want, abs=1e-12)
    assert record["label_logprob_rest"] == pytest.approx(rest, abs=1e-12)


def test_without_the_option_nothing_is_asked_and_keys_stay(serve, tmp_path):
    server = serve(outputs=OUTPUTS, logprobs=LOGPROBS)
    plain = _generate(server, tmp_path, GenerationParams(), nli_examples(1)).records[0]
    assert "logprobs" not in server.bodies[0] and "label_logprobs" not in plain
    assert plain["params"] == {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "n": 1, "stop": ["\nPremise:"],
                               "seed": None, "endpoint": "chat"}  # the key of a cache written before the option
    scored = _generate(server, tmp_path, GenerationParams(label_logprobs=True), nli_examples(1)).records[0]
    assert scored["key"] != plain["key"] and server.requests == 2
    assert scored["params"]["label_logprobs"] is True and scored["params"]["top_logprobs"] == 20


def test_self_consistency_votes_are_smoothed_shares(serve, tmp_path):
    outputs = {"0": ["a.\nAnswer: entailment", "b.\nAnswer: neutral", "c.\nAnswer: entailment", "d.\nAnswer: what"]}
    server = serve(outputs=outputs)
    # votes come with --n K with or without --label-logprobs (free); nothing extra is asked of the API
    for params in (GenerationParams(n=4, temperature=1.0), GenerationParams(n=4, temperature=1.0, label_logprobs=True)):
        record = _generate(server, tmp_path, params, nli_examples(1)).records[0]
        assert record["votes"] == {"entailment": 2, "neutral": 1}  # one sample has no valid label: 3 votes cast
        assert record["label_logprobs_source"] == "votes" and record["label_logprob_rest"] is None
        assert record["label_logprobs"] == pytest.approx(
            {"entailment": math.log(3 / 6), "neutral": math.log(2 / 6), "contradiction": math.log(1 / 6)}, abs=1e-12)
    assert all("logprobs" not in body for body in server.bodies)


def test_mapping_edge_cases():
    labels = ["bank", "bank account", "river"]
    # a label that is a prefix of another: " bank" completes "bank" (then "." ends it) and starts "bank account"
    tokens = [("So", -0.1, []), (" bank", -0.4, [(" bank", -0.4), (" river", -1.5), (" Bank", -2.5)]),
              (".", -0.2, [(".", -0.2), (" account", -1.8)])]
    fields = from_top_logprobs(labels, tokens, "So bank.", 3)
    values = fields["label_logprobs"]
    assert values["river"] == pytest.approx(-1.5)
    # " Bank" fits "bank" and "bank account" alike: nobody's; " account" after " bank": bank account
    assert values["bank account"] == pytest.approx(-0.4 - 1.8)
    assert values["bank"] == pytest.approx(math.log(math.exp(-0.4 - 0.2)))
    # tokens that do not spell the output: nothing
    assert from_top_logprobs(labels, [("Something", -0.1, [])], "So bank.", 3) is None


def test_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    examples = write_jsonl(tmp_path / "train.jsonl", nli_examples(2))
    base = ["generate", "--task", "esnli", "--source", "jsonl", "--files", json.dumps({"train": str(examples)}),
            "--out", str(tmp_path / "o.jsonl"), "--progress", "false", "--label-logprobs", "true"]
    (tmp_path / "released" / "esnli").mkdir(parents=True)
    (tmp_path / "released" / "esnli" / "palm_train.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "output": "x\nAnswer: entailment"}) + "\n" for i in range(2)))
    line = error_line(capsys, base + ["--teacher", f"replay:{tmp_path / 'released'}"])
    assert line == (
        "error: --label-logprobs: the released outputs (replay teacher) carry no scores; label log-probabilities come "
        "from openai:MODEL or openai-batch:MODEL (top_logprobs), hf:PATH or student:RUN_DIR (candidate scores), or "
        "--n K (self-consistency votes)")
    svamp = write_jsonl(tmp_path / "svamp.jsonl", [{"ID": "a1", "Body": "Tom has 3 apples.", "Question": "How many?",
                                                   "Equation": "( 3.0 )", "Answer": 3}])
    line = error_line(capsys, ["generate", "--task", "svamp", "--source", "jsonl", "--files",
                               json.dumps({"train": str(svamp)}), "--out", str(tmp_path / "s.jsonl"),
                               "--teacher", "openai:gpt-4o-mini", "--label-logprobs", "true"])
    assert line == ("error: --label-logprobs: task svamp is free-form (its answers are generated, not chosen from "
                    "candidates): there is no label distribution to record")
    line = error_line(capsys, base + ["--teacher", "openai:gpt-4o-mini", "--top-logprobs", "21"])
    assert line == "error: --top-logprobs must be between 1 and 20 (the API's limit), got 21"


def test_batch_api_records_the_same_label_logprobs(serve, tmp_path):
    params = GenerationParams(label_logprobs=True, top_logprobs=4)
    online = _generate(serve(outputs=OUTPUTS, logprobs=LOGPROBS), tmp_path, params).records
    batch = batch_api_records(tmp_path, params, OUTPUTS, LOGPROBS, 3)
    assert [r.get("label_logprobs") for r in batch] == [r.get("label_logprobs") for r in online]
    assert batch[0]["label_logprobs"] and batch[0]["label_logprob_rest"] == online[0]["label_logprob_rest"]
