"""Rank scoring: one encoder pass per batch gives each candidate's exact log-likelihood; a trained student's picks."""

import json

import pytest
import torch

from stepdistill.student.evaluate import evaluate_records, generate_texts, rank_scores
from stepdistill.student.models import load_student

from student_toy import toy_records, toy_task


def test_rank_scores_equal_full_forward_log_likelihoods(trained_toy):
    run_dir, _ = trained_toy
    model, tokenizer = load_student(run_dir / "model")
    inputs = ["[label] the color is red", "[label] the color is navy and blue", "[label] a longer input: teal"]
    choices = [["warm", "cold"], ["cold", "warm", "lukewarm"], ["warm"]]
    scores = rank_scores(model, tokenizer, inputs, choices, batch_size=2)
    assert [len(row) for row in scores] == [2, 3, 1]
    for text, candidates, row in zip(inputs, choices, scores):
        for candidate, score in zip(candidates, row):
            # independent: a separate full forward per (input, candidate); mean loss * tokens = -log-likelihood
            enc = tokenizer(text, return_tensors="pt")
            labels = tokenizer(candidate, return_tensors="pt").input_ids
            with torch.no_grad():
                loss = model(**enc, labels=labels).loss.item()
            assert score == pytest.approx(-loss * labels.shape[1], rel=1e-4, abs=1e-4), (text, candidate)


def test_trained_student_ranks_its_trained_labels(trained_toy):
    run_dir, results = trained_toy
    model, tokenizer = load_student(run_dir / "model")
    records = toy_records()
    accuracy, predictions = evaluate_records(model, tokenizer, toy_task(), records, batch_size=5)
    assert accuracy == 1.0
    assert [p["prediction"] for p in predictions] == [r["label"] for r in records]
    assert all(p["scores"][p["gold"]] > max(v for k, v in p["scores"].items() if k != p["gold"]) for p in predictions)
    # the run's own files agree: best checkpoint on valid, test scored once with the same rule
    assert results["valid_accuracy"] == results["test_accuracy"] == 1.0
    saved = [json.loads(line) for line in (run_dir / "predictions_test.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in saved] == [r["label"] for r in records]
    assert {"task", "method", "label_source", "count", "seed", "data_seed", "fraction", "steps", "valid_accuracy",
            "test_accuracy", "wall_seconds", "train_examples_per_second", "cpu_peak_rss_mb"} <= set(results)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == "step-by-step" and config["batch_size"] == 8


def test_generation_reproduces_a_trained_rationale(trained_toy):
    run_dir, _ = trained_toy
    model, tokenizer = load_student(run_dir / "model")
    records = toy_records()
    texts = generate_texts(model, tokenizer, ["[rationale] " + r["input"] for r in records], max_new_tokens=16)
    assert all(text.endswith(" color") and " is a " in text for text in texts), texts
    exact = sum(text == r["rationale"] for text, r in zip(texts, records))
    assert exact >= 12, texts  # a tiny model after 80 steps: most trained rationales come back word for word


def test_both_rank_normalizations_are_scored_from_one_pass(trained_toy):
    from stepdistill.student.evaluate import accuracy_by_rank_normalization
    from stepdistill.student.models import encode_targets
    from stepdistill.tasks import SpecTask

    run_dir, results = trained_toy
    by_normalization = results["test_accuracy_by_rank_normalization"]
    assert by_normalization["used"] == "sum" and by_normalization["sum"] == results["test_accuracy"]
    assert by_normalization["ranked"] == 16
    # a long and a short candidate, the short one right: summed log-probabilities pick it, per-token means the long one
    _, tokenizer = load_student(run_dir / "model")
    task = SpecTask({"name": "lengths", "input_template": "{text}", "labels": ["a", "a b c d e"]})
    short, long = (len(ids) for ids in encode_targets(tokenizer, ["a", "a b c d e"]))
    assert long > 2 * short
    records = [{"label": "a", "fields": {}}, {"label": "a", "fields": {}}]
    per_token = [{"a": -1.0, "a b c d e": -0.5}, {"a": -0.2, "a b c d e": -0.1}]
    summed = [{"scores": {"a": m["a"] * short, "a b c d e": m["a b c d e"] * long}} for m in per_token]
    assert accuracy_by_rank_normalization(task, records, summed, tokenizer, "sum") == {
        "ranked": 2, "used": "sum", "sum": 1.0, "mean": 0.0}
    assert accuracy_by_rank_normalization(task, records, [{"scores": m} for m in per_token], tokenizer, "mean") == {
        "ranked": 2, "used": "mean", "sum": 1.0, "mean": 0.0}
