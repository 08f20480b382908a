"""The step-by-step loss: alpha * label token mean + (1 - alpha) * rationale token mean over the global batch."""

import json

import pytest
import torch

from stepdistill.student.trainer import TrainConfig, read_log, run_training

from student_toy import VARIED, chunked_equals_one_batch, toy_records, toy_task


def _padded(tokenizer, texts, pad):
    ids = tokenizer(texts, padding=True, return_tensors="pt")
    labels = ids.input_ids.masked_fill(ids.attention_mask == 0, pad)
    return ids, labels


def test_first_step_loss_is_weighted_sum_of_task_means_and_training_lowers_both(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    records = toy_records(without_rationale=(1, 9, 12))
    alpha = 0.3
    # global batch = all 16 examples in 4 micro-batches of 4: the per-task means must span all micro-batches
    config = TrainConfig(model="tiny", method="step-by-step", alpha=alpha, max_steps=12, batch_size=16,
                         per_device_batch_size=4, learning_rate=3e-3, eval_steps=12, logging_steps=1,
                         max_target_length=16)
    results = run_training(toy_task(), records, records[:4], [], config, tmp_path)
    assert results["gradient_accumulation_steps"] == 4
    assert results["examples"] == {"given": 16, "label_task": 16, "rationale_task": 13,
                                   "dropped_no_teacher_label": {}, "no_rationale": {"no_answer": 3}}

    # independent computation with the untouched initial weights and the model's own mean cross-entropy
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student-init")
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "student-init").eval()

    def mean_loss(inputs, targets):
        enc = tokenizer(inputs, padding=True, return_tensors="pt")
        tgt = tokenizer(targets, padding=True, return_tensors="pt")
        labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
        with torch.no_grad():
            return model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).loss.item()

    label_loss = mean_loss(["[label] " + r["input"] for r in records], [r["label"] for r in records])
    with_rationale = [r for r in records if r["rationale"]]
    rationale_loss = mean_loss(["[rationale] " + r["input"] for r in with_rationale],
                               [r["rationale"] for r in with_rationale])
    # the rationale mean is over many more tokens than the label mean; a pooled mean would weigh it far more
    pooled_tokens = 16 * 2 + sum(len(tokenizer(r["rationale"]).input_ids) for r in with_rationale)
    assert pooled_tokens > 3 * 16 * 2

    log = [row for row in read_log(tmp_path) if "loss" in row]
    assert log[0]["step"] == 1
    expected = alpha * label_loss + (1 - alpha) * rationale_loss
    assert abs(log[0]["loss"] - expected) < 1e-4 * expected, (log[0]["loss"], expected)

    # both task losses fall during training
    assert log[-1]["step"] == 12
    assert log[-1]["label_loss"] < 0.5 * log[0]["label_loss"]
    assert log[-1]["rationale_loss"] < 0.5 * log[0]["rationale_loss"]


def test_standard_method_trains_the_label_task_only(tmp_path):
    records = toy_records(without_rationale=(0,))
    config = TrainConfig(model="tiny", method="standard", label_source="teacher", max_steps=2, batch_size=8,
                         learning_rate=3e-3, eval_steps=2, logging_steps=1)
    results = run_training(toy_task(), records, records[:2], [], config, tmp_path)
    # teacher labels: the example whose teacher output did not parse has no label and is dropped (counted)
    assert results["examples"]["label_task"] == 15
    assert results["examples"]["dropped_no_teacher_label"] == {"no_answer": 1}
    assert results["examples"]["rationale_task"] == 0
    log = [row for row in read_log(tmp_path) if "loss" in row]
    assert all("rationale_loss" not in row and abs(row["loss"] - row["label_loss"]) < 1e-5 for row in log)


def test_length_sorted_chunks_give_the_one_batch_loss_and_gradients(tmp_path):
    from stepdistill.student.models import build_tiny_student, load_student

    texts = [t for pair in VARIED for t in pair] + [r["input"] for r in toy_records()]
    model, tokenizer = load_student(build_tiny_student(texts, tmp_path / "tiny", seed=0))
    loss_sum = chunked_equals_one_batch(model, tokenizer, [i for i, _ in VARIED], [t for _, t in VARIED])
    assert loss_sum > 10.0  # an untrained model: a real, large loss, not a zero


def test_length_sorted_chunks_split_only_where_padding_is_saved():
    from stepdistill.student.trainer import length_sorted_chunks

    # similar lengths: one chunk, whatever the cap
    assert length_sorted_chunks([20, 22, 21, 23, 20, 22, 21, 24], [3] * 8, 4) == [[7, 3, 1, 5, 2, 6, 0, 4]]
    # two length groups: halved once (saves 46% of the padded area); the halves are uniform, so no further split
    lengths = [10, 90, 11, 91, 12, 92, 13, 93]
    assert length_sorted_chunks(lengths, [2] * 8, 4) == [[7, 5, 3, 1], [6, 4, 2, 0]]
    assert length_sorted_chunks(lengths, [2] * 8, 1) == [[7, 5, 3, 1, 6, 4, 2, 0]]  # the cap wins
    # a long tail: the chunk with the largest saving is split first, up to the cap
    chunks = length_sorted_chunks([100, 50, 25, 12, 6, 3, 2, 1], [1] * 8, 3)
    assert chunks == [[0, 1], [2, 3], [4, 5, 6, 7]]  # 37% saved there against 29% in the short half


@pytest.mark.parametrize("shared_encoder", [False, True], ids=["two-pass", "shared-encoder"])
def test_micro_batches_give_the_one_batch_losses_and_weights(tmp_path, shared_encoder):
    """per_device_batch_size (the memory knob: activations of 4 rows at a time, gradients accumulated) trains the
    same model as one batch of 16."""
    from stepdistill.student.models import load_student

    records = toy_records(without_rationale=(3, 10))
    trained, steps = {}, {}
    for cap, sort in ((None, True), (4, True), (4, False)):
        config = TrainConfig(model="tiny", method="step-by-step", alpha=0.4, max_steps=3, batch_size=16,
                             per_device_batch_size=cap, learning_rate=3e-3, eval_steps=3, logging_steps=1,
                             max_target_length=16, shared_encoder=shared_encoder, sort_micro_batches=sort,
                             log_batch_ids=True)
        run_dir = tmp_path / f"cap-{cap}-sort-{sort}"
        results = run_training(toy_task(), records, records[:4], [], config, run_dir)
        assert results["gradient_accumulation_steps"] == (1 if cap is None else 4)
        steps[cap, sort] = [json.loads(line)["example_index"]
                            for line in (run_dir / "batch_ids.rank0.jsonl").read_text().splitlines()]
        if sort:
            losses = [(row["loss"], row["label_loss"], row["rationale_loss"]) for row in read_log(run_dir)
                      if "loss" in row]
            trained[cap] = losses, load_student(run_dir / "model")[0].state_dict()
    # the same 16 examples per step; sort_micro_batches re-deals them (longest first) among the 4 micro-batches
    one_batch = steps[None, True]
    assert len(one_batch) == 3 and len(steps[4, True]) == 12
    dealt = lambda run: [sum(run[4 * step:4 * step + 4], []) for step in range(3)]
    assert [sorted(ids) for ids in dealt(steps[4, True])] == [sorted(ids) for ids in one_batch]
    assert dealt(steps[4, False]) == one_batch and dealt(steps[4, True]) != one_batch
    (one_losses, one_weights), (micro_losses, micro_weights) = trained[None], trained[4]
    assert len(one_losses) == 3 and one_losses[0][0] > 1.0  # an untrained model's real loss
    # the total loss is that of the global batch; the logged task losses are micro-batch means, averaged
    assert [row[0] for row in micro_losses] == pytest.approx([row[0] for row in one_losses], rel=1e-5)
    initial = load_student(tmp_path / "cap-None-sort-True" / "student-init")[0].state_dict()
    moved = torch.cat([(one_weights[n] - initial[n]).flatten() for n in one_weights]).norm()
    apart = torch.cat([(micro_weights[n] - one_weights[n]).flatten() for n in one_weights]).norm()
    # float summation order differs, nothing else: the two models are far closer than training moved them
    assert moved > 0.1 and apart < 1e-4 * moved, (float(moved), float(apart))
