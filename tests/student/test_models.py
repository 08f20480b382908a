import pytest
import torch

from stepdistill.student.models import build_tiny_student, load_student, student_texts

TEXTS = ["[label] [rationale]", "Anne has 14 apples and gives Peter 2 and Thomas 1.", "14 - 2 - 1 = 11",
         "premise: a man sleeps hypothesis: a man is awake", "entailment", "neutral", "contradiction"] * 20


def test_tiny_student_saves_and_loads_like_a_checkpoint(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5ForConditionalGeneration
    import sentencepiece as spm

    folder = build_tiny_student(TEXTS, tmp_path / "tiny", seed=3)
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "spiece.model"} <= {p.name for p in folder.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert isinstance(model, T5ForConditionalGeneration)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert model.config.vocab_size == len(tokenizer)
    text = "Anne has 14 apples. 14 - 2 - 1 = 11"
    ids = tokenizer(text)["input_ids"]
    # the HF tokenizer reproduces the trained SentencePiece model, plus T5's end-of-sequence
    assert ids == spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).encode(text) + [1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("114")["input_ids"])[-4:-1] == ["1", "1", "4"]  # split digits

    # same seed: same weights; a second load of the folder is identical to the first
    again = AutoModelForSeq2SeqLM.from_pretrained(build_tiny_student(TEXTS, tmp_path / "tiny2", seed=3))
    other = AutoModelForSeq2SeqLM.from_pretrained(build_tiny_student(TEXTS, tmp_path / "tiny3", seed=4))
    for (name, a), b, c in zip(model.state_dict().items(), again.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, c) for a, c in zip(model.state_dict().values(), other.state_dict().values()))


def test_load_student_accepts_tiny_or_a_path(tmp_path):
    model, tokenizer = load_student("tiny", TEXTS, tmp_path / "built", tiny_overrides={"d_model": 64, "d_kv": 16})
    assert model.config.d_model == 64
    reloaded, _ = load_student(str(tmp_path / "built"))  # a local path, like a hub name
    assert reloaded.config.d_model == 64
    with pytest.raises(ValueError, match="needs the task's texts"):
        load_student("tiny")
    with pytest.raises(ValueError, match="cannot load student model '/no/such/student'"):
        load_student("/no/such/student")


def test_student_texts_cover_inputs_labels_rationales_and_choices():
    records = [{"input": "q1", "label": "a", "rationale": "because", "teacher_label": "b", "choices": ["a", "c"]},
               {"input": "q2", "label": "c", "rationale": None, "teacher_label": None, "choices": None}]
    assert student_texts(records, "[L] ", "[R] ") == ["[L] [R] ", "q1", "a", "because", "b", "a", "c", "q2", "c"]
