"""`stepdistill inspect`: every figure of the report on small caches, against computations done here by hand."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from stepdistill.experiments import PRESETS
from stepdistill.insights.command import inspect_command
from stepdistill.tasks import get_task

MAX_TARGET = 8


def record(key, status="ok", rationale=None, label=None, gold="entailment", error=None, raw=None, usage=None,
           cost=None, model="gpt-x", **more):
    return {"id": key.split("-")[0], "key": key, "status": status, "rationale": rationale, "label": label,
            "gold": gold, "error": error, "raw_output": raw or f"{rationale} Answer: {label}", "model": model,
            "usage": usage or {"prompt_tokens": None, "completion_tokens": None}, "cost": cost, **more}


OK = [  # (key, rationale, teacher label, gold)
    ("1", "A man is a person.", "entailment", "entailment"),
    ("2", "a man is a person", "entailment", "entailment"),  # exact duplicate of 1 (case, final period)
    ("3", "A man  is a  person.", "neutral", "entailment"),  # exact duplicate again (spaces)
    ("4", "The dog runs in the park while the sun shines over the big green hill.", "neutral", "neutral"),
    ("5", "The sun shines over the big green hill while the dog runs in the park.", "neutral", "neutral"),  # near 4
    ("6", "This is an entailment of the premise.", "entailment", "contradiction"),  # leaks its label
    ("7", "The woman contradicts the statement about the cat.", "contradiction", "contradiction"),  # a form
    ("8", "Two kids play football on a sunny beach near the old harbour today.", "contradiction", "neutral"),
    ("9", "Two kids play football on a sunny beach near the old harbour.", "contradiction", "contradiction"),  # 12/13
    ("10", "It is neutral whether the cat sleeps.", "contradiction", "neutral"),  # mentions another label
]


def cache_files(folder: Path) -> list[dict]:
    """Two cache files: ok records with usage and cost, failures, a retried key, self-consistency records."""
    first = [record(k, rationale=r, label=l, gold=g, usage={"prompt_tokens": 100 + i, "completion_tokens": 10 + i},
                    cost=0.001 * (i + 1)) for i, (k, r, l, g) in enumerate(OK[:6])]
    first.append(record("11", status="failed", error="http_429", raw="", usage={"prompt_tokens": 0,
                                                                              "completion_tokens": 0}, cost=0.0))
    first.append(record("12", status="parse_error", error="no_answer", rationale="The man sleeps.", label=None,
                        raw="The man sleeps. Answer:", usage={"prompt_tokens": 50, "completion_tokens": 5}))
    second = [record(k, rationale=r, label=l, gold=g, model="gpt-y",
                     usage={"prompt_tokens": 200, "completion_tokens": 20}, cost=None) for k, r, l, g in OK[6:]]
    second.append(record("11", rationale="A girl is a child.", label="neutral", gold="neutral", model="gpt-y",
                         usage={"prompt_tokens": 30, "completion_tokens": 3}))  # the retry of key 11 succeeds
    second.append(record("13", status="parse_error", error="unknown_label", rationale="Cats purr.", label="maybe",
                         raw="Cats purr. Answer: maybe", gold="neutral", model="gpt-y"))
    second.append(record("14", status="filtered", error="disagrees_with_gold", rationale=None, label="neutral",
                         gold="entailment", model="gpt-y", outputs=["a", "b", "c"], votes={"neutral": 2, "entailment": 1}))
    second.append(record("15", rationale="Birds can fly high.", label="entailment", gold=None, model="gpt-y",
                         outputs=["x", "y", "z", "w"], votes={"entailment": 4}))
    second.append(record("16", rationale="Fish swim in water.", label="entailment", gold="entailment", model="gpt-y",
                         outputs=["p", "q", "r", "s"], votes={"entailment": 3}))  # one sample did not parse
    for name, rows in (("a.jsonl", first), ("b.jsonl", second)):
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return first + second


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from transformers import T5Tokenizer

    from stepdistill.student.models import train_sentencepiece

    folder = tmp_path_factory.mktemp("tok")
    texts = [r for _, r, _, _ in OK] * 3 + ["Birds can fly high. Fish swim in water. A girl is a child. Cats purr."]
    model = train_sentencepiece(texts, folder / "spm", vocab_size=120)
    tokenizer = T5Tokenizer(**T5Tokenizer.convert_to_native_format(vocab_file=str(model), extra_ids=0))
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder / "tokenizer"


def words(text):
    return set(re.findall(r"\w+", text.lower()))


def test_every_figure_of_the_report_on_two_caches(tmp_path, tokenizer_dir, capsys):
    from transformers import AutoTokenizer

    lines = cache_files(tmp_path)
    out = tmp_path / "report"
    inspect_command("esnli", cache=str(tmp_path / "*.jsonl"), tokenizer=str(tokenizer_dir),
                    max_target_length=MAX_TARGET, out_dir=str(out), examples=2)
    printed = capsys.readouterr().out
    report = json.loads((out / "inspect.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "inspect.json", "inspect.md", "lengths.png"]
    assert printed.startswith((out / "inspect.md").read_text()) and f"report: {out}" in printed

    # items: the last record per key (key 11's retry replaces its failure)
    latest = {row["key"]: row for row in lines}
    assert report["items"] == len(latest) == 16
    assert report["cache"] == {"files": 2, "record_lines": 17, "keys": 16, "partial_final_lines": 0}
    assert report["status"]["statuses"] == {"ok": 13, "parse_error": 2, "filtered": 1}
    reasons = report["status"]["failure_reasons"]
    assert {k: v["count"] for k, v in reasons.items()} == {
        "parse_error: no_answer": 1, "parse_error: unknown_label": 1, "filtered: disagrees_with_gold": 1}
    assert reasons["parse_error: no_answer"]["examples"] == [{"id": "12", "text": "The man sleeps. Answer:"}]

    # agreement: over answers with gold (key 15 has none); 13's "maybe" is no label
    with_gold = [r for r in latest.values() if r["gold"] is not None]
    valid = [r for r in with_gold if r["label"] in ("entailment", "neutral", "contradiction")]
    agree = sum(r["label"] == r["gold"] for r in valid)
    assert report["agreement"]["with_gold"] == len(with_gold) == 15
    assert report["agreement"]["with_teacher_label"] == len(valid) == 13
    assert report["agreement"]["agree"] == agree == 8
    assert report["agreement"]["rate"] == pytest.approx(8 / 15)
    expected = {g: {t: 0 for t in ("entailment", "neutral", "contradiction", "(no label)")}
                for g in ("entailment", "neutral", "contradiction")}
    for r in with_gold:
        expected[r["gold"]][r["label"] if r in valid else "(no label)"] += 1
    assert report["agreement"]["confusion"] == expected
    assert expected["entailment"] == {"entailment": 3, "neutral": 2, "contradiction": 0, "(no label)": 1}
    assert report["agreement"]["per_gold_label_rate"]["neutral"] == pytest.approx(3 / 6)

    # lengths in the tokenizer's tokens plus the end token, of the usable (status ok) rationales
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    usable = [r["rationale"] for r in latest.values() if r["status"] == "ok"]
    lengths = sorted(len(tok(text, add_special_tokens=False)["input_ids"]) + 1 for text in usable)
    got = report["lengths"]
    assert (got["count"], got["min"], got["max"]) == (13, lengths[0], lengths[-1])
    assert got["mean"] == pytest.approx(sum(lengths) / 13)
    assert got["percentiles"]["50"] == lengths[6] and got["percentiles"]["99"] == lengths[12]
    assert got["percentiles"]["90"] == lengths[11]  # nearest rank: ceil(0.9 * 13) = 12th value
    assert got["truncated"] == sum(n > MAX_TARGET for n in lengths) and got["truncated"] > 0
    assert {name: entry["truncated"] for name, entry in got["truncated_at_presets"].items()} == {
        name: sum(n > p.for_task(get_task("esnli")).max_target_length for n in lengths) for name, p in PRESETS.items()}

    # leakage: key 6 states its label; key 7 a form of it; key 10 another label's word
    leak = report["leakage"]
    assert (leak["checked"], leak["leaking"], leak["leaking_any_form"], leak["mentions_any_label"]) == (13, 1, 2, 2)
    assert [e["id"] for e in leak["examples"]] == ["6"]
    assert [e["id"] for e in leak["any_form_examples"]] == ["6", "7"]

    # duplicates: 1, 2, 3 are one text; 4~5 (same words) and 8~9 (Jaccard 12/13) are near duplicates
    dup = report["duplicates"]
    normalised = [" ".join(t.split()).rstrip(".").lower() for t in usable]
    distinct = sorted(set(normalised))
    near = [(a, b) for a, b in itertools.combinations(distinct, 2)
            if len(words(a) & words(b)) / len(words(a) | words(b)) >= 0.9]
    assert len(near) == dup["near_duplicate_pairs"] == 2
    assert (dup["rationales"], dup["distinct_normalised"], dup["exact_duplicate_groups"],
            dup["items_in_exact_duplicate_groups"], dup["redundant_exact"]) == (13, len(distinct), 1, 3, 2)
    assert dup["items_with_near_duplicate"] == 4
    assert dup["most_repeated"] == [{"text": "a man is a person", "count": 3}]
    assert sorted(sorted(e["id"] for e in pair) for pair in dup["near_examples"]) == [["4", "5"], ["8", "9"]]

    # self-consistency: keys 14 (2 of 3 votes), 15 (4 of 4), 16 (3 of 4)
    consistency = report["self_consistency"]
    assert consistency["records"] == 3 and consistency["samples_per_record"] == {"3": 1, "4": 2}
    assert consistency["mean_winner_share"] == pytest.approx((2 / 3 + 1 + 3 / 4) / 3)
    assert consistency["unanimous"] == 1
    assert report["equations"] is None  # not an equation task

    # tokens and cost over every record line, the superseded failure of key 11 included
    spend = report["tokens_and_cost"]
    prompt = sum(r["usage"]["prompt_tokens"] or 0 for r in lines)
    completion = sum(r["usage"]["completion_tokens"] or 0 for r in lines)
    assert (spend["prompt_tokens"], spend["completion_tokens"]) == (prompt, completion) == (1495, 163)
    assert spend["usage_records"] == sum(r["usage"]["prompt_tokens"] is not None for r in lines) == 13
    assert spend["cost_usd"] == pytest.approx(sum(r["cost"] for r in lines if r["cost"] is not None)) == \
        pytest.approx(0.021)
    assert spend["priced_records"] == 7
    assert spend["by_model"]["gpt-y"]["prompt_tokens"] == 4 * 200 + 30
    outputs = [r["raw_output"] for r in latest.values() if r["raw_output"]]
    assert spend["output_tokens_counted"]["tokens"] == sum(len(tok(o, add_special_tokens=False)["input_ids"])
                                                             for o in outputs)

    text = (out / "inspect.md").read_text()
    assert "Agreement: 8 / 15 (53.33%)" in text
    assert "| entailment | 3 | 2 | 0 | 1 | 50.00% |" in text
    assert "| `cpu` | 64 |" in text
    assert "1,495 prompt + 163 completion tokens in 13 records; cost $0.0210 over 7 priced records" in text
    assert "2 pairs, 4 / 13 (30.77%) rationales" in text


def test_svamp_equations_and_whitespace_tokens(tmp_path):
    rows = [  # (rationale, teacher label, does its final equation evaluate to the label)
        ("Kofi has 9 books. He gives 2 away and finds 2 more: 9 - 2 + 2 = 9.", "( 9.0 - 2.0 ) + 2.0", True),
        ("Each box holds 4 and there are 3 boxes, so 4 * 3 = 12", "4.0 * 3.0", True),
        ("She had 10 and lost 3, so 10 + 3 = 13", "10.0 - 3.0", False),
        ("The answer is simply the sum of them all", "2.0 + 2.0", None),
        ("Halve it: 8 / 0 = 4", "8.0 / 2.0", None),  # division by zero does not evaluate
    ]
    lines = [record(str(i), rationale=r, label=l, gold=l) for i, (r, l, _) in enumerate(rows)]
    cache = tmp_path / "svamp.jsonl"
    cache.write_text("".join(json.dumps(line) + "\n" for line in lines))
    inspect_command("svamp", cache=str(cache), tokenizer="whitespace", max_target_length=10,
                    out_dir=str(tmp_path / "r"))
    report = json.loads((tmp_path / "r" / "inspect.json").read_text())
    eq = report["equations"]
    assert (eq["checked"], eq["matches_label"], eq["differs_from_label"], eq["no_equation"]) == (5, 2, 1, 2)
    assert eq["examples"][0]["id"] == "2" and eq["examples"][0]["equation"] == "10 + 3"
    word_counts = [len(r.split()) for r, _, _ in rows]
    assert report["lengths"]["max"] == max(word_counts) and report["lengths"]["truncated"] == sum(
        n > 10 for n in word_counts)
    assert report["tokenizer"].startswith("whitespace words")
    assert report["agreement"]["confusion"] is None  # equations: no fixed label set


def test_inspect_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match=r"error: --cache '.*nothing\*\.jsonl': no such cache file"):
        inspect_command("esnli", cache=str(tmp_path / "nothing*.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record("1", rationale="x", label="neutral")) + "\n{not json\n")
    with pytest.raises(SystemExit, match=r"error: .*bad\.jsonl: line 2: not a JSON record"):
        inspect_command("esnli", cache=str(bad), tokenizer="whitespace")
    with pytest.raises(SystemExit, match=r"error: --tokenizer '.*nowhere': not a folder"):
        inspect_command("esnli", cache=str(bad), tokenizer=str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match=r"error: --max-target-length must be at least 1"):
        inspect_command("esnli", cache=str(bad), max_target_length=0)


@pytest.mark.shared_data
def test_inspect_the_papers_anli_train_outputs(shared_data_dir, tmp_path):
    from collections import Counter

    from stepdistill.data import load_task_data

    inspect_command("anli1", data_dir=str(shared_data_dir), split="train", tokenizer="whitespace",
                    out_dir=str(tmp_path / "r"))
    report = json.loads((tmp_path / "r" / "inspect.json").read_text())
    records = load_task_data("anli1", data_dir=shared_data_dir, splits=["train"]).splits["train"]
    assert report["items"] == len(records) == 1000
    assert report["status"]["statuses"] == {"ok": 993, "parse_error": 7}
    failures = Counter(r["teacher_error"] for r in records if r["teacher_error"])
    assert {k.split(": ")[1]: v["count"] for k, v in report["status"]["failure_reasons"].items()} == failures
    confusion = Counter((r["label"], r["teacher_label"] if r["teacher_label"] in ("entailment", "neutral",
                                                                                 "contradiction") else "(no label)")
                        for r in records)
    assert {(g, t): n for g, row in report["agreement"]["confusion"].items() for t, n in row.items() if n} == confusion
    assert report["agreement"]["agree"] == 756


def test_inspect_gives_the_authors_agreement_where_it_differs(tmp_path, capsys):
    fixtures = Path(__file__).resolve().parent / "fixtures" / "cqa_official"
    inspect_command("cqa", data_dir=str(fixtures), source="official", split="train", tokenizer="whitespace",
                    out_dir=str(tmp_path / "r"))
    agreement = json.loads((tmp_path / "r" / "inspect.json").read_text())["agreement"]
    assert (agreement["agree"], agreement["agree_authors"], agreement["with_gold"]) == (9, 8, 12)
    assert "By the task's authors' rule (exact text): 8 / 12 (66.67%); that is the figure" in capsys.readouterr().out
    # from a cache, the raw label text is parsed again from the raw output ("Cockpit" stays capitalised)
    output = "Pilots sit up front. So the answer is (a) Cockpit."
    cache = tmp_path / "c.jsonl"
    cache.write_text(json.dumps(record("0", rationale="Pilots sit up front.", label="cockpit", gold="cockpit")
                                | {"raw_output": output}) + "\n")
    inspect_command("cqa", cache=str(cache), tokenizer="whitespace", out_dir=str(tmp_path / "c"))
    agreement = json.loads((tmp_path / "c" / "inspect.json").read_text())["agreement"]
    assert (agreement["agree"], agreement["agree_authors"], agreement["rate_authors"]) == (1, 0, 0.0)


def test_teacher_distribution_entropy_calibration_and_reliability_plot(tmp_path):
    import math

    def logs(*probs):  # log-probabilities over (entailment, neutral, contradiction); need not sum to 1
        return {label: math.log(p) for label, p in zip(("entailment", "neutral", "contradiction"), probs)}

    rows = [  # (key, label_logprobs, teacher label, gold, status)
        ("1", logs(0.72, 0.18, 0.10), "entailment", "entailment", "ok"),
        ("2", logs(0.55, 0.30, 0.15), "neutral", "neutral", "ok"),  # its top label is not the parsed one
        ("3", logs(0.05, 0.04, 0.91), "contradiction", "contradiction", "ok"),
        ("4", logs(0.10, 0.33, 0.07), "neutral", "entailment", "ok"),  # sums to 0.5: renormalised to .2 .66 .14
        ("5", logs(0.95, 0.03, 0.02), "entailment", None, "ok"),  # no gold: not in the calibration
        ("6", None, "neutral", "neutral", "ok"),  # no distribution
        ("7", logs(1 / 6, 4 / 6, 1 / 6), "neutral", "entailment", "filtered"),  # votes, dropped by the gold filter
    ]
    lines = []
    for key, values, label, gold, status in rows:
        extra = {} if values is None else {"label_logprobs": values, "label_logprobs_source":
                                          "votes" if key == "7" else "top_logprobs", "label_logprob_rest": None}
        lines.append(record(key, status=status, rationale="A reason.", label=label, gold=gold, **extra))
    cache = tmp_path / "soft.jsonl"
    cache.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "r"
    inspect_command("esnli", cache=str(cache), tokenizer="whitespace", out_dir=str(out))
    got = json.loads((out / "inspect.json").read_text())["teacher_distribution"]

    distributions = [(0.72, 0.18, 0.10), (0.55, 0.30, 0.15), (0.05, 0.04, 0.91), (0.2, 0.66, 0.14),
                     (0.95, 0.03, 0.02), (1 / 6, 4 / 6, 1 / 6)]
    entropy = sum(-sum(p * math.log(p) for p in d) for d in distributions) / 6
    assert got["records"] == 6 and got["sources"] == {"top_logprobs": 5, "votes": 1}
    assert got["mean_entropy_nats"] == pytest.approx(entropy, abs=1e-12)
    # graded (top confidence, top == gold): bin 7 (.72 right), 5 (.55 wrong), 9 (.91 right), 6 (.66 and 4/6 wrong)
    ece = 0.2 * (1 - 0.72) + 0.2 * 0.55 + 0.2 * (1 - 0.91) + 0.4 * (0.66 + 4 / 6) / 2
    assert got["with_gold"] == 5 and got["ece"] == pytest.approx(ece, abs=1e-12) == pytest.approx(0.449333, abs=1e-6)
    assert got["top_accuracy"] == pytest.approx(2 / 5)
    assert got["mean_confidence"] == pytest.approx((0.72 + 0.55 + 0.91 + 0.66 + 4 / 6) / 5, abs=1e-12)
    assert [b["count"] for b in got["bins"]] == [0, 0, 0, 0, 0, 1, 2, 1, 0, 1]
    assert got["bins"][6]["accuracy"] == 0.0 and got["bins"][6]["confidence"] == pytest.approx((0.66 + 4 / 6) / 2)
    assert (got["top_is_parsed"], got["with_parsed_label"]) == (5, 6)  # key 2's top is entailment, parsed neutral
    assert "reliability.png" in {p.name for p in out.iterdir()} and (out / "reliability.png").stat().st_size > 1000
    text = (out / "inspect.md").read_text()
    assert "6 records carry the teacher's label distribution (top_logprobs 5, votes 1). Mean entropy" in text
    assert "expected calibration error 0.4493 (10 bins, top-label confidence); top-label accuracy 40.00%" in text
    assert "| 0.6-0.7 | 2 | 0.00% | 66.33% |" in text
    assert "parsed from its text in 5 / 6 (83.33%)." in text
