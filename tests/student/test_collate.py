"""Batching: one optimizer step's micro-batches re-dealt by length keep the step's examples and cut the padding."""

from stepdistill.student.collate import MultiTaskCollator, length_sorted_micro_batches


def _row(i: int, length: int) -> dict:
    # input and target lengths grow with ``length``; odd rows have no rationale
    return {"example_index": i, "input_ids": [5] * length, "labels": [7, 1],
            "rationale_input_ids": [6] * length if i % 2 == 0 else [],
            "rationale_labels": [8] * (length // 2) + [1] if i % 2 == 0 else [], "length": length}


def test_micro_batches_are_dealt_longest_first_with_the_same_examples_and_less_padding():
    lengths = [3, 11, 4, 12, 2, 10, 5, 9]
    rows = [_row(i, n) for i, n in enumerate(lengths)]
    collate = MultiTaskCollator(pad_token_id=0)
    # as the dataloader dealt them: every micro-batch mixes short and long rows
    given = [collate([rows[i] for i in ids]) for ids in ([0, 1, 2, 3], [4, 5, 6, 7])]

    dealt = length_sorted_micro_batches(given, lengths, rows.__getitem__, collate)

    assert [batch["example_index"].tolist() for batch in dealt] == [[3, 1, 5, 7], [6, 2, 0, 4]]
    assert [tuple(batch["input_ids"].shape) for batch in given] == [(4, 12), (4, 10)]
    assert [tuple(batch["input_ids"].shape) for batch in dealt] == [(4, 12), (4, 5)]
    # the rationale task follows its rows: rows 0, 2, 4 and 6 have one
    assert [batch["rationale_rows"].tolist() for batch in dealt] == [[], [0, 1, 2, 3]]
    assert dealt[1]["rationale_labels"].tolist() == [[8, 8, 1], [8, 8, 1], [8, 1, -100], [8, 1, -100]]
    assert dealt[1]["attention_mask"].sum(1).tolist() == [5, 4, 3, 2]
    # the step's target tokens (what the loss divides by) are unchanged
    tokens = lambda batches, key: sum(int(b[key].ne(-100).sum()) for b in batches)
    assert tokens(dealt, "labels") == tokens(given, "labels") == 16
    assert tokens(dealt, "rationale_labels") == tokens(given, "rationale_labels") == 10


def test_one_micro_batch_is_only_reordered():
    rows = [_row(i, n) for i, n in enumerate([3, 7])]
    collate = MultiTaskCollator(pad_token_id=0)
    dealt = length_sorted_micro_batches([collate(rows)], [3, 7], rows.__getitem__, collate)
    assert dealt[0]["example_index"].tolist() == [1, 0]
