"""Decoder-only (causal LM) students on a tiny random Llama: row layout, the loss on target tokens only, rank
scores from the shared prompt's KV cache, batched left-padded generation, training and prediction."""

import pytest
import torch

from stepdistill.tasks import get_task
from stepdistill.student.families import PROMPT_SEPARATOR, CausalFamily, family_of
from stepdistill.student.models import load_student, student_texts
from stepdistill.student.trainer import TrainConfig, read_log, run_training

from student_toy import toy_records, toy_task


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    records = toy_records()
    texts = student_texts(records, "[label] ", "[rationale] ") + ["lukewarm", "a much longer input: teal"]
    return load_student("tiny-llama", texts, tmp_path_factory.mktemp("tiny-llama"), seed=1)


def _ids(tokenizer, text, special=False):
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _log_likelihood(model, tokenizer, prompt: str, target: str) -> tuple[float, int]:
    """Independent: one unpadded full forward of prompt ids + target ids + eos; the target tokens' log-probabilities."""
    prompt_ids = _ids(tokenizer, prompt, special=True) + _ids(tokenizer, PROMPT_SEPARATOR)
    target_ids = _ids(tokenizer, target) + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(target_ids) - 1)
    return sum(logprobs[p, t].item() for p, t in zip(positions, target_ids)), len(target_ids)


def test_family_comes_from_the_checkpoint_config(tiny_llama, trained_toy):
    model, tokenizer = tiny_llama
    assert family_of(model).name == "causal" and type(model).__name__ == "LlamaForCausalLM"
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    t5, _ = load_student(trained_toy[0] / "model")
    assert family_of(t5).name == "seq2seq"


def test_row_is_prompt_then_target_tokenised_separately_and_the_prompt_carries_no_label(tiny_llama):
    model, tokenizer = tiny_llama
    family = CausalFamily()
    inputs, labels = family.training_rows(tokenizer, ["[label] the color is red", "[rationale] teal"],
                                          ["warm", "teal is a cold color"], 64, 16)
    prompt = _ids(tokenizer, "[label] the color is red", special=True) + _ids(tokenizer, "\n")
    target = _ids(tokenizer, "warm") + [tokenizer.eos_token_id]
    assert prompt[0] == tokenizer.bos_token_id
    assert inputs[0] == prompt + target
    assert labels[0] == [-100] * len(prompt) + target
    assert len(inputs[1]) == len(labels[1]) and labels[1][-1] == tokenizer.eos_token_id
    # the loss: target tokens only; changing the prompt's labels to anything cannot matter since they are -100
    batch_ids = torch.tensor([inputs[0]])
    total, count = family.loss_sum(model.eval(), batch_ids, torch.ones_like(batch_ids), torch.tensor([labels[0]]))
    expected, n = _log_likelihood(model, tokenizer, "[label] the color is red", "warm")
    assert count.item() == n == len(target)
    assert total.item() == pytest.approx(-expected, rel=1e-5)


def test_first_step_loss_is_weighted_sum_of_task_means_computed_from_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    records = toy_records(without_rationale=(1, 9, 12))
    alpha = 0.3
    config = TrainConfig(model="tiny-llama", method="step-by-step", alpha=alpha, max_steps=12, batch_size=16,
                         per_device_batch_size=4, learning_rate=1e-2, eval_steps=12, logging_steps=1,
                         max_target_length=16)
    results = run_training(toy_task(), records, records[:4], [], config, tmp_path)
    assert results["family"] == "causal" and results["gradient_accumulation_steps"] == 4
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student-init")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student-init").eval()

    def token_mean(pairs):
        scored = [_log_likelihood(model, tokenizer, prompt, target) for prompt, target in pairs]
        return -sum(s for s, _ in scored) / sum(n for _, n in scored)

    label_loss = token_mean([("[label] " + r["input"], r["label"]) for r in records])
    rationale_loss = token_mean([("[rationale] " + r["input"], r["rationale"]) for r in records if r["rationale"]])
    log = [row for row in read_log(tmp_path) if "loss" in row]
    expected = alpha * label_loss + (1 - alpha) * rationale_loss
    assert log[0]["step"] == 1
    assert log[0]["loss"] == pytest.approx(expected, rel=1e-4)
    assert log[-1]["label_loss"] < 0.5 * log[0]["label_loss"]
    assert log[-1]["rationale_loss"] < 0.5 * log[0]["rationale_loss"]


def test_rank_scores_from_the_shared_prompt_cache_equal_full_forwards(tiny_llama):
    from stepdistill.student.evaluate import rank_scores

    model, tokenizer = tiny_llama
    inputs = ["[label] the color is red", "[label] a much longer input: teal", "[label] navy"]
    choices = [["warm", "cold"], ["cold", "warm", "lukewarm"], ["warm"]]
    for normalization in ("sum", "mean"):
        scores = rank_scores(model, tokenizer, inputs, choices, batch_size=2, normalization=normalization)
        assert [len(row) for row in scores] == [2, 3, 1]
        for text, candidates, row in zip(inputs, choices, scores):
            for candidate, score in zip(candidates, row):
                total, n = _log_likelihood(model, tokenizer, text, candidate)
                expected = total / n if normalization == "mean" else total
                assert score == pytest.approx(expected, rel=1e-4, abs=1e-4), (text, candidate, normalization)


def test_mean_normalization_lets_a_longer_correct_choice_win(tiny_llama):
    """Summed log-probabilities favour short answers; the per-token mean does not."""
    from stepdistill.student.evaluate import predict_records, rank_scores

    model, tokenizer = tiny_llama
    prompt, short = "the color is red", "blue"
    longer = ["warm and bright like red fire", "a warm color", "warm red warm red warm", "red is a warm color",
              "orange yellow pink gold", "warm warm", "crimson scarlet amber"]
    sums = rank_scores(model, tokenizer, ["[label] " + prompt], [[short] + longer])[0]
    means = rank_scores(model, tokenizer, ["[label] " + prompt], [[short] + longer], normalization="mean")[0]
    winner = next(c for c, s, m in zip(longer, sums[1:], means[1:]) if s < sums[0] and m > means[0])
    assert len(_ids(tokenizer, winner)) > len(_ids(tokenizer, short))
    record = [{"id": 0, "input": prompt, "label": winner, "choices": [short, winner]}]
    by_sum = predict_records(model, tokenizer, toy_task(), record, rank_normalization="sum")[0]
    by_mean = predict_records(model, tokenizer, toy_task(), record, rank_normalization="mean")[0]
    assert by_sum["prediction"] == short and by_mean["prediction"] == winner


def test_batched_left_padded_generation_equals_greedy_decoding_of_each_prompt(tiny_llama):
    from stepdistill.student.evaluate import generate_texts

    model, tokenizer = tiny_llama
    prompts = ["[rationale] the color is red", "[rationale] a much longer input: teal and more", "[label] navy"]
    texts = generate_texts(model, tokenizer, prompts, batch_size=3, max_new_tokens=6)
    for prompt, text in zip(prompts, texts):
        ids = _ids(tokenizer, prompt, special=True) + _ids(tokenizer, PROMPT_SEPARATOR)
        new = []
        with torch.no_grad():  # no cache, no padding: argmax of a full forward, token by token
            for _ in range(6):
                token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                if token == tokenizer.eos_token_id:
                    break
                new.append(token)
        assert text == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_trained_causal_student_ranks_generates_and_predicts(trained_llama_toy):
    from stepdistill.student.predict import load_trained_student, predict

    run_dir, results = trained_llama_toy
    assert results["valid_accuracy"] == results["test_accuracy"] == 1.0
    student = load_trained_student(run_dir, task=toy_task())
    assert student.meta["family"] == "causal" and student.meta["prompt_separator"] == PROMPT_SEPARATOR
    assert get_task(student.meta["task_reference"]).name == "toy-colors"  # rebuilds the spec task
    rows = predict(student, [{"text": "crimson"}, "the color is teal"], rationales=True)
    assert [row["prediction"] for row in rows] == ["warm", "cold"]
    assert [row["rationale"] for row in rows] == ["crimson is a warm color", "teal is a cold color"]


def test_length_sorted_chunks_give_the_one_batch_loss_for_causal_rows(tiny_llama):
    from stepdistill.student.collate import MultiTaskCollator
    from stepdistill.student.loss import token_loss_sum

    from student_toy import VARIED

    model, tokenizer = tiny_llama
    family = CausalFamily()
    inputs, labels = family.training_rows(tokenizer, [i for i, _ in VARIED], [t for _, t in VARIED], 128, 64)
    batch = MultiTaskCollator(tokenizer.pad_token_id)(
        [{"input_ids": i, "labels": t, "rationale_input_ids": [], "rationale_labels": [], "example_index": n}
         for n, (i, t) in enumerate(zip(inputs, labels))])
    assert batch["attention_mask"].sum(1).min() * 3 < batch["input_ids"].shape[1]  # really uneven rows
    model.eval()
    results = []
    for chunks in (1, 3):
        model.zero_grad()
        total, count = token_loss_sum(family, model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                      chunks)
        total.backward()
        results.append((total.item(), count.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (one_sum, one_count, one_grads), (chunk_sum, chunk_count, chunk_grads) = results
    assert one_count == chunk_count == sum(sum(x != -100 for x in row) for row in labels)
    assert chunk_sum == pytest.approx(one_sum, rel=1e-5) and one_sum > 10.0
    assert all(torch.allclose(g, h, rtol=1e-4, atol=1e-6) for g, h in zip(chunk_grads, one_grads))
