"""Tiny toy task (16 colours, warm or cold) shaped like the data layer's records, for the student tests."""

from __future__ import annotations

import math

import torch

from stepdistill.tasks import SpecTask

TOY_SPEC = {"name": "toy-colors", "input_template": "the color is {text}", "labels": ["warm", "cold"], "label_field": "label"}
WARM = ("red", "orange", "yellow", "pink", "gold", "amber", "crimson", "scarlet")
COLD = ("blue", "green", "cyan", "teal", "navy", "azure", "indigo", "violet")


def toy_task() -> SpecTask:
    return SpecTask(dict(TOY_SPEC))


def toy_records(without_rationale: tuple[int, ...] = ()) -> list[dict]:
    """16 records shaped like the data layer's; the indices in ``without_rationale`` have an unusable teacher output."""
    task = toy_task()
    records = []
    for i, (word, label) in enumerate([(w, "warm") for w in WARM] + [(w, "cold") for w in COLD]):
        fields = {"id": i, "text": word, "label": label}
        usable = i not in without_rationale
        records.append({
            "id": str(i), "input": task.format_input(fields), "label": label, "choices": list(task.labels),
            "teacher_output": f"{word} is a {label} color. So the answer is {label}." if usable else "garbled",
            "rationale": f"{word} is a {label} color" if usable else None,
            "teacher_label": label if usable else None,
            "teacher_error": None if usable else "no_answer",
            "fields": fields,
        })
    return records


def soft_records(without_rationale=(1, 5, 12)):
    """The toy records with a teacher distribution (p(warm) varies by example); the teacher failed on
    ``without_rationale``, which then carry none."""
    records = toy_records(without_rationale=without_rationale)
    for i, record in enumerate(records):
        if record["teacher_error"] is None:
            warm = (0.9 - 0.04 * i) if record["label"] == "warm" else (0.05 + 0.03 * i)
            record["label_logprobs"] = {"warm": math.log(warm), "cold": math.log(1 - warm)}
    return records


def chunked_equals_one_batch(model, tokenizer, inputs, targets):
    """token_loss_sum over length-sorted chunks gives the one-padded-batch sum, token count and gradients."""
    from stepdistill.student.models import encode_targets
    from stepdistill.student.collate import MultiTaskCollator, length_sorted_chunks
    from stepdistill.student.families import family_of
    from stepdistill.student.loss import token_loss_sum

    collator = MultiTaskCollator(tokenizer.pad_token_id)
    features = [{"input_ids": i, "labels": t, "rationale_input_ids": [], "rationale_labels": [], "example_index": n}
                for n, (i, t) in enumerate(zip(tokenizer(inputs)["input_ids"], encode_targets(tokenizer, targets)))]
    batch = collator(features)
    # lengths differ a lot, so the batch really is split into chunks cut shorter than the batch
    assert batch["attention_mask"].sum(1).min() * 3 < batch["input_ids"].shape[1]
    groups = length_sorted_chunks(batch["attention_mask"].sum(1).tolist(), batch["labels"].ne(-100).sum(1).tolist(), 3)
    assert len(groups) >= 2 and sorted(r for g in groups for r in g) == list(range(len(inputs)))
    model.eval()  # no dropout: both ways must see the same network
    results = []
    for chunks in (1, 3, 100):
        model.zero_grad()
        total, count = token_loss_sum(family_of(model), model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunks)
        total.backward()
        results.append((total.item(), count.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (one_sum, one_count, one_grads) = results[0]
    assert one_count == sum(len(t) for t in encode_targets(tokenizer, targets))
    for chunk_sum, chunk_count, grads in results[1:]:
        assert chunk_count == one_count
        assert abs(chunk_sum - one_sum) < 1e-4 * one_sum, (chunk_sum, one_sum)
        assert len(grads) == len(one_grads)
        assert all(torch.allclose(g, h, rtol=1e-4, atol=1e-6) for g, h in zip(grads, one_grads))
    return one_sum


VARIED = [("[label] the color is red", "warm"),
          ("[rationale] the color is a very long and winding description of a deep blue evening sky over the sea",
           "blue is a cold color because it reminds people of water and ice"),
          ("[label] teal", "cold"),
          ("[label] the color is orange like a fire in a stove on a winter night", "warm"),
          ("[rationale] pink", "pink is warm"),
          ("[label] the color is navy", "cold")]

