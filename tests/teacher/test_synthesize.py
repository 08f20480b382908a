"""`generate --synthesize`: exact cache contents, dropped counts per reason (test leaks included), resume and kill
without a request sent twice, against the loopback server's synthesis mode."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from teacher_helpers import API_KEY, cache_lines, write_jsonl

from stepdistill.data import load_task_data
from stepdistill.teacher.synthesis_prompts import parse_list, synthesis_template_for_task
from stepdistill.teacher.synthesize import DROP_REASONS, SyntheticGenerator, format_synthesis_summary
from stepdistill.teacher.teachers import GenerationParams, OpenAITeacher
from stepdistill.tasks import get_task

# e-SNLI-shaped examples (fields id, premise, hypothesis, label; train with a teacher output, as palm_train)
TRAIN = [
    ("A man in a blue shirt is fixing a bicycle in his garage.", "A man is repairing something.", "entailment",
     "Fixing a bicycle is repairing something."),
    ("Two girls are jumping rope on a sunny sidewalk.", "The girls are asleep in bed.", "contradiction",
     "Girls jumping rope on a sidewalk are not asleep in bed."),
    ("A woman sells apples at a crowded market stall.", "The woman grew the apples herself.", "neutral",
     "Selling apples does not show that she grew them."),
    ("An old man feeds pigeons in a city square.", "A man is outside with birds.", "entailment",
     "Pigeons are birds and a city square is outside."),
    ("A chef slices onions in a busy restaurant kitchen.", "The chef is swimming in a lake.", "contradiction",
     "A chef in a kitchen cannot be swimming in a lake."),
    ("A child in a yellow raincoat splashes in a puddle.", "The child is playing in the rain.", "neutral",
     "Puddles can remain after the rain has stopped."),
    ("Three musicians play guitars on a small wooden stage.", "People are making music.", "entailment",
     "Musicians playing guitars are making music."),
    ("A dog carries a stick across a snowy field.", "A cat sleeps on a sofa.", "contradiction",
     "A dog in a field is not a cat on a sofa."),
]
TRAIN_WRONG = ("A boy reads a comic book under a tree.", "A boy is reading.", "entailment", "He reads.")  # teacher says neutral
VALID = [("A surfer rides a huge wave near a rocky shore at sunset.", "Someone is in the ocean.", "entailment"),
         ("A baker pulls fresh bread out of a stone oven.", "The baker is asleep.", "contradiction")]
TEST = [("An old fisherman repairs a torn net on the wooden dock at dawn.", "A man is working.", "entailment"),
        ("A young woman in a green dress paints a large mural of flowers on a brick wall downtown.",
         "A woman is creating art.", "entailment")]


def _write_data(tmp_path):
    train = [{"id": i, "premise": p, "hypothesis": h, "label": l, "teacher": f"{r}\nAnswer: {l}"}
             for i, (p, h, l, r) in enumerate(TRAIN)]
    p, h, l, r = TRAIN_WRONG
    train.append({"id": len(TRAIN), "premise": p, "hypothesis": h, "label": l, "teacher": f"{r}\nAnswer: neutral"})
    files = {"train": write_jsonl(tmp_path / "train.jsonl", train)}
    for split, rows in (("valid", VALID), ("test", TEST)):
        files[split] = write_jsonl(tmp_path / f"{split}.jsonl", [
            {"id": i, "premise": p, "hypothesis": h, "label": l, "teacher": None} for i, (p, h, l) in enumerate(rows)])
    return {split: str(path) for split, path in files.items()}


def _load(files):
    return load_task_data("esnli", source="jsonl", files=files, teacher_field="teacher", carve_valid=None)


def _example(premise, hypothesis, rationale, label):
    return f" {premise}\nHypothesis: {hypothesis}\nReasonings: {rationale}\nAnswer: {label}"


# one reply per slot, each meant for one outcome
REPLIES = [
    _example("A woman rides a red horse along a quiet beach.", "A person is riding an animal.",
             "A horse is an animal and she rides it.", "entailment"),                                   # 0 ok
    _example("Four friends play cards at a kitchen table late at night.", "The friends are running a race.",
             "Playing cards at a table is not running a race.", "contradiction"),                       # 1 ok
    " A man reads a paper on a train.\nReasonings: Reading.\nAnswer: entailment",                     # 2 no hypothesis
    _example("A cook stirs soup in a big pot.", "Someone is cooking.", "Stirring soup is cooking.", "maybe"),  # 3
    " A kid kicks a ball.\nHypothesis: A kid plays.\nReasonings: Kicking a ball is playing.",          # 4 no answer
    _example("an old fisherman  repairs a torn net on the wooden dock at dawn.", "A man is working.",
             "Repairing a net is work.", "entailment"),                                                 # 5 test, exact
    _example("A young woman in a green dress paints a large mural of roses on a brick wall downtown.",
             "A woman is creating art.", "Painting a mural is creating art.", "entailment"),             # 6 test, near
    _example("A surfer rides a huge wave near a rocky shore at sunset.", "Someone is in the ocean.",
             "Riding a wave means being in the ocean.", "entailment"),                                  # 7 valid, exact
    _example("Three musicians play guitars on a small wooden stage.", "People are making music.",
             "Playing guitars is making music.", "entailment"),                                         # 8 train, exact
    _example("A woman rides a red horse along a quiet beach.", "A person is riding an animal.",
             "She rides a horse.", "entailment"),                                                       # 9 = slot 0
    _example("Four friends play cards at a kitchen table late at night", "The friends are running a long race.",
             "Cards are not a race.", "contradiction"),                                                 # 10 near slot 1
    _example("A baker pulls fresh bread out of a stone oven in the morning.", "The baker is asleep.",
             "Pulling bread out of an oven is not sleeping.", "contradiction"),                         # 11 valid, near
    _example("An old man feeds pigeons in a city square today.", "A man is outside with birds.",
             "Pigeons are birds.", "entailment"),                                                       # 12 train, near
    None,                                                                                               # 13 http_500
]
EXPECTED = [("ok", None), ("ok", None), ("dropped", "invalid_fields"), ("dropped", "unknown_label"),
            ("dropped", "unparsable_rationale"), ("dropped", "duplicate_test"), ("dropped", "near_duplicate_test"),
            ("dropped", "duplicate_valid"), ("dropped", "duplicate_train"), ("dropped", "duplicate_synthetic"),
            ("dropped", "near_duplicate_synthetic"), ("dropped", "near_duplicate_valid"),
            ("dropped", "near_duplicate_train"), ("failed", "http_500")]


def _teacher(server):
    return OpenAITeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, timeout=2.0, backoff_base=0.01,
                         max_attempts=2)


def _marker(prompt):  # the fake server's name for a prompt without an [ex:ID] marker
    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


def _scripted(serve, files, tmp_path, count=len(REPLIES)):
    data = _load(files)
    planner = SyntheticGenerator("esnli", OpenAITeacher("gpt-4o-mini", api_key=API_KEY), tmp_path / "plan.jsonl",
                                 data.splits, shots=3, progress=False)
    prompts = [job.prompt for job in planner.plan_slots(count)]
    assert len(set(prompts)) == count
    replies = {prompt: reply for prompt, reply in zip(prompts, REPLIES) if reply is not None}
    server = serve(prompt_fn=replies.get, faults={_marker(prompts[13]): ["500", "500"]} if count > 13 else {})
    return server, data, prompts


def test_exact_cache_and_dropped_counts_per_reason(serve, tmp_path):
    files = _write_data(tmp_path)
    server, data, prompts = _scripted(serve, files, tmp_path)
    out = tmp_path / "synthetic.jsonl"
    generator = SyntheticGenerator("esnli", _teacher(server), out, data.splits, shots=3, progress=False)
    records, summary = generator.synthesize(len(REPLIES))
    assert [(r["status"], r["error"]) for r in records] == EXPECTED
    lines = cache_lines(out)
    assert [(r["id"], r["status"], r["error"]) for r in lines] == [(f"synth-0-{i}", *e) for i, e in enumerate(EXPECTED)]
    assert summary.accepted == 2 and summary.slots == 14 and summary.requests == 15  # the failed slot tried twice
    assert dict(summary.dropped) == {"invalid_fields": 1, "unknown_label": 1, "unparsable_rationale": 1,
                                     "duplicate_test": 1, "near_duplicate_test": 1, "duplicate_valid": 1,
                                     "near_duplicate_valid": 1, "duplicate_train": 1, "near_duplicate_train": 1,
                                     "duplicate_synthetic": 1, "near_duplicate_synthetic": 1}
    assert set(summary.dropped) == set(DROP_REASONS)
    assert dict(summary.request_failures) == {"http_500": 1}

    first = lines[0]
    assert set(first) == {"id", "key", "prompt_hash", "teacher", "model", "params", "synthetic", "status", "error",
                          "error_detail", "raw_output", "finish_reason", "usage", "cost", "attempts", "attempt_errors",
                          "created", "fields", "input", "rationale", "label", "gold"}
    assert first["fields"] == {"premise": "A woman rides a red horse along a quiet beach.",
                               "hypothesis": "A person is riding an animal.", "id": "synth-0-0", "label": "entailment"}
    assert first["input"] == ("premise: A woman rides a red horse along a quiet beach. "
                              "hypothesis: A person is riding an animal.")
    assert (first["rationale"], first["label"], first["gold"]) == ("A horse is an animal and she rides it.",
                                                                   "entailment", "entailment")
    assert first["params"]["stop"] == ["\n###"] and first["attempts"] == 1
    # the demonstrations are train examples whose teacher label agrees with gold (never id 8), three per slot, rotated
    shown = [r["synthetic"]["demonstrations"] for r in lines]
    assert all(len(d) == 3 and "8" not in d for d in shown)
    assert len({i for d in shown[:2] for i in d} | set(shown[2][:2])) == 8  # the first lap shows each example once
    assert first["synthetic"] == {"task": "esnli", "slot": 0, "seed": 0, "demonstrations": shown[0]}
    details = {r["id"]: r["error_detail"] for r in lines}
    assert details["synth-0-2"] == "no 'Hypothesis:' for field 'hypothesis'"
    assert details["synth-0-3"] == "label 'maybe'"
    assert details["synth-0-4"] == "no_answer"
    assert details["synth-0-5"] == "equal to test example 0"
    assert details["synth-0-6"] == "close to test example 1"
    assert details["synth-0-7"] == "equal to valid example 0"
    assert details["synth-0-8"] == "equal to train example 6"
    assert details["synth-0-9"] == "equal to synthetic example synth-0-0"
    assert details["synth-0-10"] == "close to synthetic example synth-0-1"
    assert details["synth-0-11"] == "close to valid example 1"
    assert details["synth-0-12"] == "close to train example 3"
    assert lines[3]["fields"]["premise"] == "A cook stirs soup in a big pot." and lines[3]["label"] is None
    assert lines[13]["attempt_errors"] == ["http_500", "http_500"] and lines[13]["raw_output"] is None
    text = format_synthesis_summary(summary)
    assert "14 synthesis slots: 0 from the cache, 14 generated (15 requests)" in text
    assert "accepted: 2 new examples; dropped: 11 (invalid_fields 1, unknown_label 1, unparsable_rationale 1, " \
           "duplicate_test 1, near_duplicate_test 1, duplicate_valid 1, near_duplicate_valid 1, duplicate_train 1, " \
           "near_duplicate_train 1, duplicate_synthetic 1, near_duplicate_synthetic 1)" in text
    assert "request failures (after retries) by reason: http_500 1" in text
    assert API_KEY not in out.read_text()


def test_rerun_sends_nothing_and_more_slots_send_only_the_new(serve, tmp_path):
    files = _write_data(tmp_path)
    server, data, prompts = _scripted(serve, files, tmp_path)
    out = tmp_path / "synthetic.jsonl"

    def run(count, **options):
        return SyntheticGenerator("esnli", _teacher(server), out, data.splits, shots=3, progress=False,
                                  **options).synthesize(count)

    run(12)
    assert server.requests == 12
    before = out.read_text()
    records, summary = run(12)
    assert server.requests == 12 and summary.cached == 12 and summary.generated == 0
    assert out.read_text() == before  # the final pass agrees with itself
    records, summary = run(14)  # two more slots: two new prompts (the failing one twice)
    assert server.requests == 15 and summary.cached == 12
    assert [r["status"] for r in records] == [s for s, _ in EXPECTED]
    assert max(server.per_marker.values()) == 2 and server.per_marker[_marker(prompts[13])] == 2
    records, summary = run(14, retry_failed=True)  # the failed slot is asked again, nothing else
    assert server.requests == 16 and summary.cached == 13  # its script has no more faults: accepted
    assert records[13]["status"] == "ok"
    assert len(cache_lines(out)) == 14


def test_sigkill_then_resume_sends_no_saved_slot_again(serve, tmp_path):
    files = _write_data(tmp_path)
    server = serve(latency=0.05)  # default synthesis replies: a new example per prompt
    out = tmp_path / "synthetic.jsonl"
    slots = 40
    command = [sys.executable, "-m", "stepdistill.cli", "generate", "--task", "esnli", "--source", "jsonl",
               "--files", json.dumps(files), "--teacher-field", "teacher", "--teacher", "openai:gpt-4o-mini",
               "--base-url", server.url, "--out", str(out), "--synthesize", str(slots), "--shots", "3",
               "--concurrency", "4", "--timeout", "5", "--progress", "false"]
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.read_bytes().count(b"\n") < 12) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGKILL)
    process.wait()
    data = out.read_bytes()
    complete = data[:data.rfind(b"\n") + 1].decode().splitlines()
    saved_keys = {json.loads(line)["key"] for line in complete}
    assert 12 <= len(saved_keys) < slots
    before = server.requests
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = cache_lines(out)
    assert len(records) == len({r["key"] for r in records}) == slots
    assert f"{slots} synthesis slots: {len(saved_keys)} from the cache, {slots - len(saved_keys)} generated" in done.stdout
    assert server.requests - before == slots - len(saved_keys)  # the resumed run asks for the missing slots only
    assert server.requests <= slots + 4  # at most the requests in flight at the kill were sent twice
    # the server's default reply is a new example per prompt: a slot whose prompt repeats an earlier one's repeats
    # its example, and only those are dropped
    first_of = {}
    for record in records:
        first_of.setdefault(record["prompt_hash"], record["id"])
    assert [(r["status"], r["error"]) for r in records] == [
        ("ok", None) if first_of[r["prompt_hash"]] == r["id"] else ("dropped", "duplicate_synthetic") for r in records]
    assert len(first_of) > slots * 3 // 4


def test_templates_of_every_built_in_task_render_and_parse_back():
    for name, fields, answer_label in (
            ("esnli", {"premise": "A cat naps.", "hypothesis": "An animal rests."}, "entailment"),
            ("anli1", {"premise": "Mount Tor is 2,000 m high.", "hypothesis": "Mount Tor is high."}, "entailment"),
            ("cqa", {"question": "Where is milk kept cold?", "choices": ["oven", "fridge", "car", "desk", "bed"]},
             "fridge"),
            ("svamp", {"Body": "Ann has 3 pens and buys 4 more.", "Question": "How many pens does she have?"},
             "( 3.0 + 4.0 )")):
        task = get_task(name)
        lists = ("choices",) if name == "cqa" else ()
        template = synthesis_template_for_task(task, list_fields=lists)
        answer = task.answer_text("Because it is so.", answer_label, fields)
        prompt = template.render([(fields, answer)])
        assert prompt.endswith("\n###\n" + template.cue) and template.cue.endswith(":")
        block = template.render_block(fields, answer)
        reply = block[len(template.cue):] + "\n###\nQ: more"
        parsed, answer_text, problem = template.parse_reply(reply)
        assert problem is None and parsed == fields, name
        result = task.parse_teacher(answer_text, {**parsed})
        assert result.error is None and result.rationale == "Because it is so.", name
        assert task.is_correct(result.label, answer_label, parsed), name
    assert parse_list("(a) x (b) y (c) z") == ["x", "y", "z"]
    assert parse_list("(a) x (c) y") is None and parse_list("(a) x (b) x") is None and parse_list("x (a) y") is None


def test_reply_parsing_is_bounded():
    task = get_task("esnli")
    template = synthesis_template_for_task(task)
    hostile = " A" * 10_000 + "\nHypothesis: " * 5_000 + "Reasonings:" * 5_000
    started = time.perf_counter()
    fields, _, problem = template.parse_reply(hostile)
    assert time.perf_counter() - started < 0.5
    assert fields is None and problem == "no 'Hypothesis:' for field 'hypothesis'"  # cut at 8,000 characters
    fields, _, problem = template.parse_reply(" " + "A" * 2500 + "\nHypothesis: h\nReasonings: r\nAnswer: neutral")
    assert fields is None and problem == "field 'premise' is longer than 2000 characters"
    fields, answer, problem = template.parse_reply("A  cat\nnaps.\nHypothesis:  It rests.\nReasonings: r\nAnswer: neutral"
                                                   "\n###\nPremise: next")
    assert problem is None and fields == {"premise": "A cat naps.", "hypothesis": "It rests."}
    assert answer == "r\nAnswer: neutral"
    svamp = synthesis_template_for_task(get_task("svamp"))  # a teacher that goes on without a separator
    fields, answer, problem = svamp.parse_reply(" Ann has 3 pens.\nQuestion: How many?\nA: 3 pens. The answer is "
                                                "(3.0).\n\nBody: Tom has 4.\nQuestion: How many?\nA: The answer is (4.0).")
    assert problem is None and answer == "3 pens. The answer is (3.0)."


def test_synthesis_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from stepdistill.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    files = _write_data(tmp_path)
    plain = tmp_path / "plain.txt"
    plain.write_text("Premise: {premise}\nHypothesis: {hypothesis}\nReasonings:")
    base = ["generate", "--task", "esnli", "--source", "jsonl", "--files", json.dumps(files), "--teacher-field",
            "teacher", "--out", str(tmp_path / "s.jsonl"), "--teacher", "openai:gpt-4o-mini", "--base-url",
            "http://127.0.0.1:9/v1"]
    cases = [
        (["--synthesize", "0"], "error: option --synthesize: must be at least 1, got 0"),
        (["--synthesize", "3", "--shard", "0/2"], "error: option --shard does not apply to --synthesize"),
        (["--synthesize", "3", "--split", "test"], "error: option --split: --synthesize shows the teacher train"),
        (["--synthesize", "3", "--n", "3", "--temperature", "0.7"], "error: option --n: synthesis takes one sample"),
        (["--synthesize", "3", "--shots", "0"], "error: option --shots: must be at least 1, got 0"),
        (["--synthesize", "3", "--near-threshold", "1.5"], "error: option --near-threshold: must be in (0, 1]"),
        (["--synthesize", "3", "--prompt", str(plain)], f"error: {plain}: a synthesis template needs a line '###'"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as raised:
            main(base + extra)
        assert str(raised.value).startswith(message), (extra, str(raised.value))
        assert "\n" not in str(raised.value)
    replay = [a if a != "openai:gpt-4o-mini" else "replay:" + str(tmp_path) for a in base]
    with pytest.raises(SystemExit, match="error: "):
        main(replay + ["--synthesize", "3"])
    rationale_cache = write_jsonl(tmp_path / "r.jsonl", [{"id": "0", "key": "k", "status": "ok"}])
    with pytest.raises(SystemExit, match=r"error: .*r\.jsonl: record 1 \(id 0\) is not a synthetic example"):
        main([a if a != str(tmp_path / "s.jsonl") else str(rationale_cache) for a in base] + ["--synthesize", "3"])


def _record(raw_output, finish_reason="stop"):
    return {"id": "synth-0-0", "key": "k", "status": "ok", "error": None, "error_detail": None,
            "raw_output": raw_output, "finish_reason": finish_reason, "synthetic": {"task": "x", "slot": 0}}


def test_cqa_choices_and_svamp_equations_are_validated(tmp_path):
    cqa_train = [{"id": f"q{i}", "question": f"Where would you keep item number {i}?",
                  "choices": ["shelf", "oven", "river", "cloud", "pocket"], "answer": "shelf",
                  "teacher": "Items are kept on a shelf. So the answer is (a) shelf."} for i in range(3)]
    files = {"train": str(write_jsonl(tmp_path / "cqa.jsonl", cqa_train))}
    data = load_task_data("cqa", source="jsonl", files=files, teacher_field="teacher", carve_valid=None)
    teacher = OpenAITeacher("gpt-4o-mini", api_key=API_KEY)
    cqa = SyntheticGenerator("cqa", teacher, tmp_path / "c.jsonl", data.splits, shots=2, progress=False)
    assert "Answer Choices: (a) shelf (b) oven (c) river (d) cloud (e) pocket\nA: Items are kept on a shelf. So the " \
           "answer is (a) shelf.\n###" in cqa.plan_slots(1)[0].prompt
    good = " What do you wear on your feet?\nAnswer Choices: (a) hat (b) shoes (c) gloves\nA: Shoes go on feet. " \
           "So the answer is (b) shoes."
    record = cqa.assess(_record(good), None)
    assert (record["status"], record["label"], record["fields"]["choices"]) == ("ok", "shoes", ["hat", "shoes", "gloves"])
    assert record["input"] == "What do you wear on your feet?\nAnswer Choices:\n(a) hat\n(b) shoes\n(c) gloves"
    wrong = cqa.assess(_record(good.replace("(b) shoes.", "(d) boots.")), None)
    assert (wrong["status"], wrong["error"], wrong["error_detail"]) == ("dropped", "unknown_label", "label 'boots'")
    bad_list = cqa.assess(_record(good.replace("(c) gloves", "(b) gloves")), None)
    assert (bad_list["error"], bad_list["error_detail"]) == (
        "invalid_fields", "field 'choices': expected at least two distinct items '(a) ... (b) ...'")

    svamp_train = [{"id": i, "Body": f"Ann has {i + 2} pens and buys 3 more.", "Question": "How many pens has she?",
                    "Equation": f"( {i + 2}.0 + 3.0 )", "teacher": f"She has {i + 2} + 3 pens. The answer is "
                    f"({i + 2}.0 + 3.0)."} for i in range(3)]
    files = {"train": str(write_jsonl(tmp_path / "svamp.jsonl", svamp_train))}
    data = load_task_data("svamp", source="jsonl", files=files, teacher_field="teacher", carve_valid=None)
    svamp = SyntheticGenerator("svamp", teacher, tmp_path / "s.jsonl", data.splits, shots=2, progress=False)
    reply = " Tom had 9 apples and ate 4.\nQuestion: How many apples are left?\nA: 9 - 4 = 5. The answer is (9.0 - 4.0)."
    record = svamp.assess(_record(reply), None)
    assert (record["status"], record["label"], record["fields"]["Equation"]) == ("ok", "(9.0 - 4.0)", "(9.0 - 4.0)")
    hostile = svamp.assess(_record(reply.replace("(9.0 - 4.0)", "(9 ** 9 ** 9)")), None)
    assert (hostile["status"], hostile["error"]) == ("dropped", "unknown_label")
    cut = svamp.assess(_record(" Tom had 9 apples.\nQuestion: How many", finish_reason="length"), None)
    assert (cut["error"], cut["error_detail"]) == ("invalid_fields", "no 'A:' for field 'answer' (the answer was cut "
                                                                     "off at the token limit)")


@pytest.mark.parametrize("body, message", [
    ("Write one.\nPremise: {premise}", "a synthesis template needs a line '###'"),
    ("Write one.\n###\nPremise: {premise}\nReasonings: {answer}",
     "line 4: the example block's placeholders premise must be the task's fields premise, hypothesis, each once"),
    ("Write one.\n###\nPremise: {premise}\nHypothesis: {hypothesis}\n{answer}", "placeholder {answer} needs a label"),
    ("Write one.\n###\nPremise: {premise}\nHypothesis: {hypothesis}", "needs {answer} once, as its last placeholder"),
    ("Write one.\n###\nPremise: {premise}\nReasonings: {answer}\nHypothesis: {hypothesis}",
     "the example block must end with {answer}|needs {answer} once, as its last placeholder"),
    ("Write {what}.\n###\nPremise: {premise}\nHypothesis: {hypothesis}\nA: {answer}", "the instruction takes no placeholders"),
])
def test_bad_synthesis_templates_name_file_and_problem(tmp_path, body, message):
    path = tmp_path / "mine.txt"
    path.write_text("# my template\n" + body)
    with pytest.raises(ValueError, match=r"mine\.txt: .*(" + message.replace("{", r"\{").replace("}", r"\}")
                       .replace("(", r"\(").replace(")", r"\)").replace("'", "'") + ")"):
        synthesis_template_for_task(get_task("esnli"), str(path))
