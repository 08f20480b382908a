"""Soft labels on the label task: (1 - w) * CE(hard) + w * T^2 * KL(teacher_T || student_T) over the candidates,
the KL averaged over the soft-label examples of the whole global batch."""

import json
import math
from pathlib import Path

import pytest
import torch

from stepdistill.student.trainer import TrainConfig, read_log, run_training

from cli_helpers import error_line
from student_toy import soft_records, toy_records, toy_task

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "tests" / "fixtures" / "sentiment_soft" / "teacher_cache.jsonl"
SENTIMENT = ["--task", str(REPO / "data" / "sentiment_task.json"), "--source", "jsonl",
             "--files", json.dumps({"train": str(REPO / "data" / "sentiment_train.jsonl")})]


def hand_kl(teacher: list[float], student: list[float], temperature: float) -> float:
    """KL(softmax(teacher / T) || softmax(student / T)) in plain Python."""
    def softmax(values):
        top = max(v / temperature for v in values)
        exps = [math.exp(v / temperature - top) for v in values]
        return [e / sum(exps) for e in exps]

    p, q = softmax(teacher), softmax(student)
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def test_attach_rationales_copies_label_logprobs_of_usable_records_only():
    from stepdistill.rationales import attach_rationales

    distribution = {"warm": -0.1, "cold": -2.4}
    cache = {"0": {"id": "0", "key": "a", "status": "ok", "rationale": "r", "label": "warm",
                   "label_logprobs": distribution},
             "1": {"id": "1", "key": "b", "status": "parse_error", "error": "no_answer", "label": None,
                   "label_logprobs": distribution},
             "2": {"id": "2", "key": "c", "status": "ok", "rationale": "r", "label": "cold"}}
    examples = [{"id": str(i), "input": "x", "label": "warm", "label_logprobs": {"stale": 0.0}} for i in range(4)]
    joined = attach_rationales(examples, cache)
    assert joined[0]["label_logprobs"] == distribution
    assert ["label_logprobs" in row for row in joined] == [True, False, False, False]  # nothing stale survives


def test_soft_targets_follow_each_examples_candidates_and_bad_fields_are_named():
    from stepdistill.student.soft_labels import soft_target
    from stepdistill.tasks import get_task

    cqa = get_task("cqa")
    record = {"id": "q7", "choices": ["bank", "river", "shop"], "teacher_error": None,
              "label_logprobs": {"shop": -3.0, "bank": -0.2, "river": -1.9}}
    target, reason = soft_target(record, "river", cqa)
    assert reason is None
    assert target == {"choices": ["bank", "river", "shop"], "teacher": [-0.2, -1.9, -3.0], "gold_index": 1}
    with pytest.raises(ValueError, match=r"example q7: field 'label_logprobs': keys must be exactly its "
                                         r"candidates \['bank', 'river', 'shop'\], got \['bank', 'shop'\]"):
        soft_target({**record, "label_logprobs": {"bank": -0.2, "shop": -1.0}}, "bank", cqa)
    with pytest.raises(ValueError, match="finite log-probabilities"):
        soft_target({**record, "label_logprobs": {"bank": -0.2, "river": float("nan"), "shop": -1.0}}, "bank", cqa)
    # a failed teacher output: no soft target (hard label only), its reason counted
    assert soft_target({"id": "q8", "teacher_error": "no_answer"}, "bank", cqa) == (None, "no_answer")


@pytest.mark.parametrize("causal", [False, True])
def test_collator_passes_each_rows_candidates_teacher_distribution_and_gold_index(causal):
    from stepdistill.student.collate import MultiTaskCollator

    features = [
        {"input_ids": [5, 6, 7], "labels": [-100, -100, -100, 8, 1] if causal else [8, 1],
         "candidate_ids": [[8, 1], [9, 9, 1]], "teacher_logprobs": [-0.5, -1.0], "gold_index": 0},
        {"input_ids": [4], "labels": [-100, 9, 1] if causal else [9, 1], "candidate_ids": [],
         "teacher_logprobs": [], "gold_index": -1},  # the teacher failed here: no soft target
        {"input_ids": [3, 3], "labels": [-100, -100, 9, 9, 1] if causal else [9, 9, 1],
         "candidate_ids": [[2, 1], [8, 1], [9, 9, 1]], "teacher_logprobs": [-0.25, -2.0, -3.0], "gold_index": 2},
    ]
    if causal:
        features[0]["input_ids"] += [8, 1]
        features[1]["input_ids"] += [9, 1]
        features[2]["input_ids"] += [9, 9, 1]
    for feature in features:
        feature.update(rationale_input_ids=[], rationale_labels=[], example_index=0)
    collate = MultiTaskCollator(0, labels_follow_inputs=causal)
    batch = collate(features)
    assert batch["soft_rows"].tolist() == [0, 2]
    assert batch["soft_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["soft_teacher"].tolist() == [[-0.5, -1.0, 0.0], [-0.25, -2.0, -3.0]]
    # every candidate of a soft-label example; the label of the row without one (hard loss only)
    labels = [[t for t in row.tolist() if t != -100] for row in batch["candidate_labels"]]
    assert labels == [[8, 1], [9, 9, 1], [9, 1], [2, 1], [8, 1], [9, 9, 1]]
    assert batch["candidate_rows"].tolist() == [0, 0, 1, 2, 2, 2]
    assert batch["candidate_slots"].tolist() == [0, 1, -1, 0, 1, 2]
    assert batch["candidate_hard"].tolist() == [True, False, True, False, False, True]
    assert bool(batch["labels_are_gold"])
    if causal:  # the prompt, then the candidate; loss on the candidate only
        rows = [row[:int(n)].tolist() for row, n in zip(batch["candidate_input_ids"],
                                                       batch["candidate_attention_mask"].sum(1))]
        assert rows == [[5, 6, 7, 8, 1], [5, 6, 7, 9, 9, 1], [4, 9, 1], [3, 3, 2, 1], [3, 3, 8, 1], [3, 3, 9, 9, 1]]
        assert batch["candidate_labels"][1].tolist() == [-100, -100, -100, 9, 9, 1]
    else:  # the candidates as decoder labels; the encoder reads each batch row once
        assert "candidate_input_ids" not in batch
        assert batch["candidate_labels"][1].tolist() == [9, 9, 1]
    # a label that is not its gold candidate's tokens: the hard loss needs its own pass
    features[2]["gold_index"] = 1
    assert not bool(collate(features)["labels_are_gold"])


@pytest.mark.parametrize("model_name,normalization", [("tiny", "sum"), ("tiny", "mean"), ("tiny-llama", "sum")])
def test_kl_term_equals_a_hand_computation_from_the_ranking_scores(tmp_path, model_name, normalization):
    from stepdistill.student.collate import MultiTaskCollator
    from stepdistill.student.examples import select_examples, tokenize_examples
    from stepdistill.student.families import family_of
    from stepdistill.student.models import load_student, student_texts
    from stepdistill.student.soft_labels import label_task_loss, label_task_sums, soft_loss_sum

    records = soft_records()
    config = TrainConfig(model=model_name, method="distill", max_target_length=16)
    model, tokenizer = load_student(model_name, student_texts(records, config.label_prefix, config.rationale_prefix),
                                    tmp_path / "init", seed=3)
    model.eval()
    family = family_of(model)
    examples, counts = select_examples(records, config, toy_task())
    assert (counts["soft_labels"], counts["no_soft_labels"]) == (13, {"no_answer": 3})
    dataset = tokenize_examples(examples, tokenizer, config, family)
    batch = MultiTaskCollator(tokenizer.pad_token_id, family.labels_follow_inputs)([dataset[i] for i in range(16)])
    temperature = 2.0
    kl, n = soft_loss_sum(family, model, batch, temperature, normalization)
    assert int(n) == 13

    # by hand: ranking's own scores (no gradients), the teacher's log-probs, KL in plain Python
    soft = [(e, r) for e, r in zip(examples, records) if e["soft"]]
    with torch.no_grad():
        scores = family.rank_scores(model, tokenizer, [config.label_prefix + e["input"] for e, _ in soft],
                                    [e["soft"]["choices"] for e, _ in soft], 8, 512, normalization)
    teacher = [[r["label_logprobs"][c] for c in e["soft"]["choices"]] for e, r in soft]
    expected = sum(hand_kl(t, s, temperature) for t, s in zip(teacher, scores))
    assert expected > 1e-3  # a real difference between the two distributions
    assert kl.item() == pytest.approx(expected, rel=1e-4)
    # temperature 1 is another number (the temperature really divides both)
    assert soft_loss_sum(family, model, batch, 1.0, normalization)[0].item() == pytest.approx(
        sum(hand_kl(t, s, 1.0) for t, s in zip(teacher, scores)), rel=1e-4)

    # one pass for the whole label task (the default): the gold candidates' rows give the label pass's hard loss
    # (the 3 teacher failures' rows are scored on their labels alone), in one chunk or in length-sorted chunks
    hard_sum, hard_tokens = family.loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert bool(batch["labels_are_gold"])
    for chunks in (1, 3):
        fused = label_task_sums(family, model, batch, temperature, normalization, chunks=chunks)
        assert [int(fused[1]), int(fused[3])] == [int(hard_tokens), 13]
        assert [fused[0].item(), fused[2].item()] == pytest.approx([hard_sum.item(), expected], rel=1e-5)

    if family.name == "seq2seq":  # the other candidates reuse the first pass's cross-attention keys and values
        projected = []
        hook = model.decoder.block[0].layer[1].EncDecAttention.k.register_forward_hook(
            lambda module, args, out: projected.append(args[0].shape[0]))
        label_task_sums(family, model, batch, temperature, normalization)
        hook.remove()
        assert projected == [16]  # the encoder states of each batch row projected once, not once per candidate

    def gradient(*terms):
        model.zero_grad()
        sum(terms).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    separate = gradient(*family.loss_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[:1],
                        soft_loss_sum(family, model, batch, temperature, normalization)[0])
    fused = label_task_sums(family, model, batch, temperature, normalization, chunks=3)
    assert (gradient(fused[0], fused[2]) - separate).abs().max() < 1e-5 * separate.abs().max()

    # the label task: (1 - w) * hard + w * T^2 * KL / (soft-label examples of the global batch)
    hard = torch.tensor(1.7)
    mixed = label_task_loss(hard, kl, torch.tensor(26.0), 0.3, temperature)  # 26: two such micro-batches
    assert mixed.item() == pytest.approx(0.7 * 1.7 + 0.3 * 4 * expected / 26, rel=1e-4)
    # gradients reach the student through its candidate scores
    model.zero_grad()
    kl.backward()
    assert sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None) > 0
    # a micro-batch of teacher failures only: nothing to add; sharded (FSDP) still runs one forward, weighted 0
    failed = MultiTaskCollator(tokenizer.pad_token_id, family.labels_follow_inputs)([dataset[i] for i in (1, 5, 12)])
    plain, sharded = (soft_loss_sum(family, model, failed, temperature, normalization, sharded=s) for s in (0, 1))
    assert (plain[0].item(), int(plain[1]), plain[0].requires_grad) == (0.0, 0, False)
    assert (sharded[0].item(), int(sharded[1]), sharded[0].requires_grad) == (0.0, 0, True)


def _run(tmp_path, name, **overrides):
    settings = dict(model="tiny", method="distill", label_source="gold", max_steps=2, batch_size=8,
                    learning_rate=3e-3, eval_steps=2, logging_steps=1, max_target_length=16, seed=1)
    settings.update(overrides)
    results = run_training(toy_task(), soft_records(), toy_records()[:4], [], TrainConfig(**settings),
                           tmp_path / name)
    return results, [row for row in read_log(tmp_path / name) if "loss" in row]


@pytest.mark.parametrize("method", ["distill", "step-by-step"])
def test_one_batch_and_four_micro_batches_give_the_same_losses_and_weights(tmp_path, method):
    from transformers import AutoModelForSeq2SeqLM

    # plain SGD: Adam's per-weight normalised step would turn float noise in near-zero gradients into 2e-4 moves
    extra = {"optim": "sgd", "learning_rate": 0.1, **({"soft_weight": 0.6} if method == "step-by-step" else {})}
    one, log_one = _run(tmp_path, "one", method=method, **extra)
    four, log_four = _run(tmp_path, "four", method=method, per_device_batch_size=2, **extra)
    assert (one["gradient_accumulation_steps"], four["gradient_accumulation_steps"]) == (1, 4)
    # the micro-batches hold different numbers of soft-label examples (3 teacher failures): a per-micro-batch mean
    # would weigh them differently
    assert [row["loss"] for row in log_four] == pytest.approx([row["loss"] for row in log_one], rel=1e-5)
    assert [row["soft_loss"] for row in log_one][0] > 0
    weights = [AutoModelForSeq2SeqLM.from_pretrained(tmp_path / run / "model").state_dict() for run in ("one", "four")]
    initial = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "one" / "student-init").state_dict()
    moved = max((weights[0][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # the steps changed the weights
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in initial) < 1e-6


def test_first_step_loss_is_the_hard_loss_mixed_with_the_global_mean_kl(tmp_path):
    """The logged first-step loss against an independent computation from the initial weights; soft_weight 0
    (a schedule's first value) reproduces the hard-label loss of a run without soft labels exactly."""
    from stepdistill.student.models import load_student

    temperature, weight = 2.0, 0.4
    # all 16 examples in one global batch of 4 micro-batches
    common = dict(max_steps=1, batch_size=16, per_device_batch_size=4, eval_steps=1)
    _, standard = _run(tmp_path, "standard", method="standard", **common)
    _, scheduled = _run(tmp_path, "scheduled", soft_weight_schedule="linear:0:1", **{**common, "max_steps": 2})
    _, soft = _run(tmp_path, "soft", soft_weight=weight, temperature=temperature, **common)
    assert scheduled[0]["soft_weight"] == 0.0 and scheduled[1]["soft_weight"] == 1.0
    assert scheduled[0]["loss"] == pytest.approx(standard[0]["loss"], rel=1e-6)  # w = 0: today's loss
    assert "soft_loss" not in standard[0]

    model, tokenizer = load_student(tmp_path / "soft" / "student-init")
    model.eval()
    from stepdistill.student.families import family_of

    records = [r for r in soft_records() if "label_logprobs" in r]
    with torch.no_grad():
        scores = family_of(model).rank_scores(model, tokenizer, ["[label] " + r["input"] for r in records],
                                              [["warm", "cold"]] * len(records), 16, 512)
    kl_mean = sum(hand_kl([r["label_logprobs"][c] for c in ("warm", "cold")], s, temperature)
                  for r, s in zip(records, scores)) / len(records)
    expected = (1 - weight) * standard[0]["loss"] + weight * temperature ** 2 * kl_mean
    assert soft[0]["loss"] == pytest.approx(expected, rel=1e-4)
    assert soft[0]["soft_weight"] == weight and soft[0]["temperature"] == temperature


def test_train_distill_from_a_cache_with_label_logprobs_end_to_end(tmp_path, capsys):
    from stepdistill.cli import main

    out = tmp_path / "run"
    main(["train", *SENTIMENT, "--rationales", str(CACHE), "--method", "distill", "--label-source", "teacher",
          "--temperature", "2", "--max-steps", "12", "--eval-steps", "6", "--logging-steps", "1",
          "--learning-rate", "0.003", "--batch-size", "8", "--output-dir", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert (results["method"], results["label_source"], results["soft_weight"], results["temperature"]) == \
        ("distill", "teacher", 0.5, 2.0)  # distill's default soft weight
    # s5's teacher output has no answer: dropped with teacher labels (the carved valid split takes 2 of 12)
    assert results["examples"]["soft_labels"] == results["examples"]["label_task"] == 9
    assert results["examples"]["dropped_no_teacher_label"] == {"no_answer": 1}
    config = json.loads((out / "config.json").read_text())
    assert (config["soft_weight"], config["temperature"], config["method"]) == (None, 2.0, "distill")
    log = [row for row in read_log(out) if "loss" in row]
    assert len(log) == 12 and all(row["soft_weight"] == 0.5 and "alpha" not in row for row in log)
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert log[-1]["soft_loss"] < log[0]["soft_loss"]


def test_soft_label_refusals_are_one_error_line(tmp_path, capsys):
    fixtures = REPO / "tests" / "fixtures"
    train = ["train", "--max-steps", "1", "--output-dir", str(tmp_path / "run")]
    cached = [*SENTIMENT, "--rationales", str(CACHE)]
    # replayed outputs without scores
    line = error_line(capsys, train + SENTIMENT + ["--teacher-field", "teacher", "--method", "distill"])
    assert line == ("error: example s0: its teacher record has no 'label_logprobs' (soft labels: --soft-weight, "
                    "method distill); caches from `stepdistill generate --label-logprobs true` with an API, HF or "
                    "student: teacher carry it; the replayed PaLM outputs have none")
    line = error_line(capsys, train + ["--task", "svamp", "--data-dir", str(fixtures / "svamp_official"),
                                       "--source", "official", "--method", "distill"])
    assert line.startswith("error: task svamp: free-form answers have no candidate labels, so no soft labels")
    assert error_line(capsys, train + cached + ["--soft-weight", "1.5"]) == \
        "error: option --soft-weight: soft_weight must be in [0, 1], got 1.5"
    assert error_line(capsys, train + cached + ["--method", "distill", "--temperature", "0"]) == \
        "error: option --temperature: temperature must be in (0, 100], got 0"
    assert error_line(capsys, train + cached + ["--method", "distill", "--soft-weight", "0"]).startswith(
        "error: method distill trains on soft labels: --soft-weight must be above 0")
    assert error_line(capsys, train + cached + ["--method", "single-task", "--soft-weight", "0.3"]) == \
        ("error: option --soft-weight: soft labels apply to the label task of methods standard, step-by-step, "
         "distill, not to 'single-task'")
    assert error_line(capsys, train + cached + ["--soft-weight", "0.3", "--shared-encoder", "true"]).startswith(
        "error: option --soft-weight: soft labels are not supported with --shared-encoder")
