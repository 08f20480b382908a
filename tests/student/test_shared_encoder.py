"""`shared_encoder`: the task prefix goes to the decoder, the encoder runs once per batch for both tasks."""

import json

import pytest
import torch

from stepdistill.student.families import Seq2SeqFamily, family_of
from stepdistill.student.models import encode_targets
from stepdistill.student.predict import load_trained_student, predict
from stepdistill.student.trainer import TrainConfig, read_log, run_training

from student_toy import toy_records, toy_task

PREFIXES = ("[label] ", "[rationale] ")


def _forced_loss(model, tokenizer, inputs, targets, prefix):
    """Mean target-token cross-entropy of a bare encoder input and a decoder forced with the prefix tokens, by one
    plain forward per task (the reference for the shared pass)."""
    prefix_ids = tokenizer(prefix.strip(), add_special_tokens=False)["input_ids"]
    enc = tokenizer(inputs, padding=True, return_tensors="pt")
    rows = [prefix_ids + t for t in encode_targets(tokenizer, targets)]
    width = max(map(len, rows))
    full = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([[-100] * len(prefix_ids) + r[len(prefix_ids):] + [-100] * (width - len(r)) for r in rows])
    decoder_input_ids = model._shift_right(full)
    with torch.no_grad():
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                       decoder_input_ids=decoder_input_ids).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=-100).item()


def test_first_step_loss_is_the_forced_prefix_loss_and_training_lowers_both(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    records = toy_records(without_rationale=(2, 11))
    alpha = 0.4
    config = TrainConfig(model="tiny", method="step-by-step", alpha=alpha, max_steps=10, batch_size=16,
                         learning_rate=3e-3, eval_steps=10, logging_steps=1, max_target_length=16, shared_encoder=True)
    results = run_training(toy_task(), records, records[:4], [], config, tmp_path)
    assert results["shared_encoder"] is True and results["examples"]["rationale_task"] == 14
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student-init")
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "student-init").eval()
    with_rationale = [r for r in records if r["rationale"]]
    label_loss = _forced_loss(model, tokenizer, [r["input"] for r in records], [r["label"] for r in records],
                              PREFIXES[0])
    rationale_loss = _forced_loss(model, tokenizer, [r["input"] for r in with_rationale],
                                  [r["rationale"] for r in with_rationale], PREFIXES[1])
    log = [row for row in read_log(tmp_path) if "loss" in row]
    expected = alpha * label_loss + (1 - alpha) * rationale_loss
    assert log[0]["step"] == 1 and log[0]["loss"] == pytest.approx(expected, rel=1e-4)
    assert log[0]["label_loss"] == pytest.approx(label_loss, rel=1e-4)
    assert log[-1]["label_loss"] < 0.5 * log[0]["label_loss"]
    assert log[-1]["rationale_loss"] < 0.5 * log[0]["rationale_loss"]


def test_one_encoder_pass_gives_the_two_pass_sums():
    from stepdistill.student.models import build_tiny_student, load_student
    import tempfile

    records = toy_records()
    with tempfile.TemporaryDirectory() as tmp:
        texts = [p + r["input"] for r in records for p in PREFIXES] + [r["rationale"] for r in records]
        model, tokenizer = load_student(build_tiny_student(texts + ["warm", "cold"], tmp, seed=0))
    model.eval()
    family = Seq2SeqFamily(PREFIXES)
    enc = tokenizer([r["input"] for r in records], padding=True, return_tensors="pt")
    labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in encode_targets(tokenizer, [r["label"] for r in records])],
                                             batch_first=True, padding_value=-100)
    rows = torch.tensor([1, 4, 6, 7])
    rationales = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(t) for t in encode_targets(tokenizer, [records[i]["rationale"] for i in rows])],
        batch_first=True, padding_value=-100)
    calls = []
    hook = model.get_encoder().register_forward_hook(lambda *_: calls.append(1))
    (label_sum, label_n), (rationale_sum, rationale_n) = family.shared_loss_sums(
        model, tokenizer, enc.input_ids, enc.attention_mask, labels, rows, rationales, *PREFIXES)
    hook.remove()
    assert len(calls) == 1
    assert label_n.item() == labels.ne(-100).sum().item() and rationale_n.item() == rationales.ne(-100).sum().item()
    separate = _forced_loss(model, tokenizer, [records[i]["input"] for i in rows],
                            [records[i]["rationale"] for i in rows], PREFIXES[1])
    assert (rationale_sum / rationale_n).item() == pytest.approx(separate, rel=1e-5)
    assert (label_sum / label_n).item() == pytest.approx(
        _forced_loss(model, tokenizer, [r["input"] for r in records], [r["label"] for r in records], PREFIXES[0]),
        rel=1e-5)
    # ranking scores candidates after the forced prefix: the best candidate has the lowest forced-prefix loss
    scores = family.rank_scores(model, tokenizer, [PREFIXES[0] + records[0]["input"]], [["warm", "cold"]], 8, 64)[0]
    losses = [_forced_loss(model, tokenizer, [records[0]["input"]], [c], PREFIXES[0]) for c in ("warm", "cold")]
    lengths = [len(t) for t in encode_targets(tokenizer, ["warm", "cold"])]
    assert scores == pytest.approx([-loss * n for loss, n in zip(losses, lengths)], rel=1e-4)


def test_a_shared_encoder_student_predicts_what_its_trainer_scored(tmp_path):
    records = toy_records()
    config = TrainConfig(model="tiny", method="step-by-step", max_steps=80, batch_size=8, learning_rate=2e-3,
                         eval_steps=40, logging_steps=10, max_target_length=16, shared_encoder=True,
                         generate_rationales=True)
    results = run_training(toy_task(), records, records, records, config, tmp_path)
    assert results["test_accuracy"] == 1.0
    saved = [json.loads(line) for line in (tmp_path / "predictions_test.jsonl").read_text().splitlines()]
    student = load_trained_student(tmp_path, task=toy_task())
    rows = predict(student, [r["fields"] for r in records], rationales=True)
    assert [row["prediction"] for row in rows] == [row["prediction"] for row in saved] == [r["label"] for r in records]
    assert [row["rationale"] for row in rows] == [row["rationale"] for row in saved]
    # the rationale is generated after the forced "[rationale]" tokens, which are not part of it
    # (80 steps teach the form and the colour's class, not yet copying the word)
    assert all(row["rationale"].endswith(f" is a {r['label']} color") for row, r in zip(rows, records))
    assert not any(row["rationale"].startswith("[") for row in rows)
    # an export (what `serve` loads) keeps the layout in its meta file and predicts the same
    from stepdistill.serving.export import export_student, load_for_serving

    exported = load_for_serving(export_student(tmp_path, tmp_path / "export", task=toy_task()), toy_task())
    assert exported.meta["shared_encoder"] is True
    assert predict(exported, [r["fields"] for r in records]) == predict(student, [r["fields"] for r in records])


def test_a_decoder_only_student_cannot_share_an_encoder(tmp_path):
    config = TrainConfig(model="tiny-llama", max_steps=1, batch_size=4, eval_steps=1, shared_encoder=True)
    with pytest.raises(ValueError, match="shared_encoder needs an encoder-decoder student"):
        run_training(toy_task(), toy_records(), toy_records()[:2], [], config, tmp_path)
    assert family_of(type("C", (), {"is_encoder_decoder": True})(), decoder_prefixes=PREFIXES).decoder_prefixes == PREFIXES


def test_length_chunks_of_a_shared_encoder_batch_give_the_one_batch_sums_and_gradients(tmp_path):
    from stepdistill.student.collate import MultiTaskCollator, length_sorted_chunks
    from stepdistill.student.loss import shared_encoder_loss_sums
    from stepdistill.student.models import build_tiny_student, load_student

    from student_toy import VARIED

    texts = [t for pair in VARIED for t in pair] + list(PREFIXES)
    model, tokenizer = load_student(build_tiny_student(texts, tmp_path / "tiny", seed=0))
    model.eval()
    inputs, targets = [i for i, _ in VARIED], [t for _, t in VARIED]
    ids, labels = tokenizer(inputs)["input_ids"], encode_targets(tokenizer, targets)
    rationales = encode_targets(tokenizer, [t + " because " + i for i, t in VARIED])
    features = [{"input_ids": i, "labels": t, "rationale_input_ids": [], "example_index": n,
                 "rationale_labels": r if n % 3 else []} for n, (i, t, r) in enumerate(zip(ids, labels, rationales))]
    batch = MultiTaskCollator(tokenizer.pad_token_id)(features)
    assert batch["rationale_rows"].tolist() == [n for n in range(len(features)) if n % 3]
    assert len(length_sorted_chunks(batch["attention_mask"].sum(1).tolist(), [len(t) for t in labels], 3)) >= 2
    family = Seq2SeqFamily(PREFIXES)
    results = []
    for chunks in (1, 3):
        model.zero_grad()
        (label_sum, label_n), (rationale_sum, rationale_n) = shared_encoder_loss_sums(
            family, model, tokenizer, batch["input_ids"], batch["attention_mask"], batch["labels"],
            batch["rationale_rows"], batch["rationale_labels"], PREFIXES, chunks)
        (label_sum + rationale_sum).backward()
        results.append((label_sum.item(), label_n.item(), rationale_sum.item(), rationale_n.item(),
                        [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    one, chunked = results
    assert one[0] > 10 and one[2] > 10  # real losses of an untrained model
    assert chunked[:4] == pytest.approx(one[:4], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(one[4], chunked[4]))
