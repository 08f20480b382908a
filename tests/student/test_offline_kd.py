"""Offline token-level distillation from the cache's top-k per teacher token (issue 24, item 3): alignment, the
top-k divergences by hand, the refusals, and an end-to-end run whose first-step loss is composed by hand."""

import math

import pytest
import torch

from stepdistill.student.models import build_tiny_student, load_student, student_texts
from stepdistill.student.offline_kd import align, topk_divergence
from stepdistill.student.trainer import TrainConfig, read_log, run_training

from cli_helpers import error_line
from student_toy import toy_records, toy_task

SMALL = dict(d_kv=8, d_ff=64, num_heads=4)


def test_alignment_by_place_and_token():
    teacher = ["\u2581red", "\u2581is", "\u2581a", "\u2581warm", "\u2581color", ".", "\u2581So"]
    # the same tokens: each at its own place; the end-of-sequence token never aligns
    assert align(["\u2581red", "\u2581is", "\u2581a", "\u2581warm", "</s>"], teacher, {"</s>"}) == [0, 1, 2, 3, None]
    # another split of the same text ("\u2581war" "m"): those skip, the rest align
    assert align(["\u2581red", "\u2581is", "\u2581a", "\u2581war", "m", "\u2581color"], teacher) == [
        0, 1, 2, None, None, 4]
    # a first token split otherwise ("red" without its space): the rest still places
    assert align(["red", "\u2581is"], teacher) == [None, 1]
    assert align(["\u2581blue"], teacher) == [None]


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_top_k_divergences_equal_a_hand_computation():
    student = [[1.0, -0.5, 0.3, 2.0, 0.0], [0.2, 0.9, -1.1, 0.4, -0.3]]
    ids = [[3, 0], [1, 4]]
    teacher = [[-1.5, -0.4], [-0.2, -2.5]]  # log-probabilities of the top 2 (mass 0.89 and 0.90)
    want_renorm, want_bucket = [], []
    for s_row, i_row, t_row in zip(student, ids, teacher):
        p_t = [math.exp(v) for v in t_row]
        renorm_t = [p / sum(p_t) for p in p_t]
        renorm_s = _softmax([s_row[i] for i in i_row])
        want_renorm.append(sum(a * math.log(a / b) for a, b in zip(renorm_t, renorm_s)))
        full = _softmax(s_row)
        bucket_s = [full[i] for i in i_row] + [1 - sum(full[i] for i in i_row)]
        bucket_t = p_t + [1 - sum(p_t)]
        want_bucket.append(sum(a * math.log(a / b) for a, b in zip(bucket_t, bucket_s)))
    args = (torch.tensor(student), torch.tensor(ids), torch.tensor(teacher))
    assert topk_divergence(*args, "renorm", "fkl").tolist() == pytest.approx(want_renorm, rel=1e-5)
    assert topk_divergence(*args, "bucket", "fkl").tolist() == pytest.approx(want_bucket, rel=1e-5)
    assert min(want_renorm) > 1e-2 and min(want_bucket) > 1e-2
    # the student's own top-k as the teacher: zero; T^2 as in kd.py
    own = torch.log_softmax(torch.tensor(student), -1).gather(-1, torch.tensor(ids))
    for rest in ("renorm", "bucket"):
        assert topk_divergence(args[0], args[1], own, rest, "rkl").abs().max() < 1e-6
    grad = args[0].clone().requires_grad_(True)
    topk_divergence(grad, args[1], args[2], "bucket", "jsd", 0.3, 2.0).sum().backward()
    assert grad.grad[:, [2]].abs().sum() > 0  # the bucket reaches the tokens outside the top-k


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A saved tiny T5 student and a wider teacher with the same tokenizer."""
    root = tmp_path_factory.mktemp("offline")
    texts = student_texts(toy_records(), "[label] ", "[rationale] ")
    teacher = build_tiny_student(texts, root / "teacher", seed=5, d_model=64, num_layers=2, num_decoder_layers=2,
                                 **SMALL)
    student = build_tiny_student(texts, root / "student", seed=1, d_model=32, num_layers=2, num_decoder_layers=2,
                                 **SMALL)
    return teacher, student


K = 4


def _cached_records(teacher_dir, records, k=K):
    """Records carrying token_topk as the teacher would store it: its teacher-forced top-k per token of its whole
    output (rationale, then the answer sentence), as its tokenizer spells them."""
    teacher, tokenizer = load_student(teacher_dir)
    out = []
    for record in records:
        if record["rationale"] is None:
            out.append(record)
            continue
        enc = tokenizer(["[rationale] " + record["input"]], return_tensors="pt")
        ids = tokenizer([record["teacher_output"]], return_tensors="pt").input_ids[:, :-1]  # no </s>
        with torch.no_grad():
            logits = teacher(**enc, labels=ids).logits[0]
        logprobs = torch.log_softmax(logits.float(), -1)
        top = logprobs.topk(k)
        chosen = ids[0].tolist()
        out.append({**record, "teacher_token_topk": {
            "tokenizer": str(teacher_dir), "k": k, "chosen": tokenizer.convert_ids_to_tokens(chosen),
            "chosen_logprobs": [float(logprobs[p, t]) for p, t in enumerate(chosen)],
            "tokens": [tokenizer.convert_ids_to_tokens(row) for row in top.indices.tolist()],
            "logprobs": top.values.tolist()}})
    return out


@pytest.mark.parametrize("rest", ["renorm", "bucket"])
def test_end_to_end_the_first_step_loss_is_the_hand_composed_loss(models, tmp_path, rest):
    teacher_dir, student_dir = models
    records = _cached_records(teacher_dir, toy_records(without_rationale=(3,)))
    alpha, w = 0.4, 0.6
    config = TrainConfig(model=str(student_dir), token_kd_source="cache", token_kd_rest=rest, token_kd_weight=w,
                         kd_temperature=1.5, alpha=alpha, max_steps=6, batch_size=16, per_device_batch_size=4,
                         learning_rate=3e-3, eval_steps=6, logging_steps=1, max_target_length=16)
    results = run_training(toy_task(), records, records[:4], [], config, tmp_path / "run")
    assert results["kd"] == {"source": "cache", "token_kd_weight": w, "divergence": "fkl", "jsd_beta": 0.5,
                             "temperature": 1.5, "rest": rest}
    student, tokenizer = load_student(student_dir)
    student.eval()
    # by hand: the rationale targets; each but </s> is the teacher's token at the same position
    rationale = [r for r in records if r["rationale"]]
    enc = tokenizer(["[rationale] " + r["input"] for r in rationale], padding=True, return_tensors="pt")
    tgt = tokenizer([r["rationale"] for r in rationale], padding=True, return_tensors="pt")
    labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
    with torch.no_grad():
        logits = student(**enc, labels=labels).logits
    total = ce_total = 0.0
    kd_terms, tokens = [], 0
    vocab = tokenizer.get_vocab()
    for b, record in enumerate(rationale):
        stored = record["teacher_token_topk"]
        n = int(labels[b].ne(-100).sum())
        for j in range(n):
            ce = float(torch.nn.functional.cross_entropy(logits[b, j][None], labels[b, j][None]))
            tokens += 1
            ce_total += ce
            if j == n - 1:  # </s>: not among the teacher's stored tokens
                total += ce
                continue
            assert stored["chosen"][j] == tokenizer.convert_ids_to_tokens(int(labels[b, j]))
            ids = torch.tensor([[vocab[t] for t in stored["tokens"][j]]])
            kd = float(topk_divergence(logits[b, j][None], ids, torch.tensor([stored["logprobs"][j]]), rest,
                                       "fkl", 0.5, 1.5))
            kd_terms.append(kd)
            total += (1 - w) * ce + w * kd
    label_enc = tokenizer(["[label] " + r["input"] for r in records], padding=True, return_tensors="pt")
    label_tgt = tokenizer([r["label"] for r in records], padding=True, return_tensors="pt")
    label_labels = label_tgt.input_ids.masked_fill(label_tgt.attention_mask == 0, -100)
    with torch.no_grad():
        label_loss = float(student(**label_enc, labels=label_labels).loss)
    assert results["token_kd_alignment"] == {
        "rationale_tokens": tokens, "aligned": len(kd_terms), "skipped_unaligned": len(rationale),
        "skipped_short_top_k": 0, "skipped_no_token_topk": 0, "examples_without_token_topk": 0}
    log = [row for row in read_log(tmp_path / "run") if "loss" in row]
    assert log[0]["loss"] == pytest.approx(alpha * label_loss + (1 - alpha) * total / tokens, rel=1e-4)
    # the logged task terms are means over the 4 micro-batches of each one's mean: near the global means
    assert log[0]["rationale_loss"] == pytest.approx(ce_total / tokens, rel=0.05)  # the plain CE, as before
    assert log[0]["rationale_token_kd_loss"] == pytest.approx(sum(kd_terms) / len(kd_terms), rel=0.1)
    assert log[-1]["rationale_token_kd_loss"] < log[0]["rationale_token_kd_loss"]  # it learns the teacher


@pytest.mark.parametrize("divergence", ["fkl", "rkl", "jsd"])
def test_offline_equals_online_when_the_top_k_is_the_whole_vocabulary(models, divergence):
    """The cache holds the teacher's whole distribution at every token: on the aligned rationale tokens the offline
    divergence (renormalised top-k) equals the online one from the teacher's logits, and so does the CE."""
    from stepdistill.student.collate import MultiTaskCollator
    from stepdistill.student.examples import select_examples, tokenize_examples
    from stepdistill.student.families import family_of
    from stepdistill.student.offline_kd import build_offline_distiller
    from stepdistill.student.online_kd import build_online_distiller

    teacher_dir, student_dir = models
    student, tokenizer = load_student(student_dir)
    student.eval()
    family = family_of(student)
    vocabulary = len(tokenizer)
    records = _cached_records(teacher_dir, toy_records(without_rationale=(2,)), k=vocabulary)
    settings = dict(model=str(student_dir), token_kd_weight=0.5, kd_divergence=divergence, kd_temperature=1.5,
                    max_target_length=32)
    offline_config = TrainConfig(token_kd_source="cache", **settings)
    examples, _ = select_examples(records, offline_config, toy_task())
    dataset = tokenize_examples(examples, tokenizer, offline_config, family)
    offline = build_offline_distiller(offline_config, examples, records, dataset, tokenizer, family)
    online = build_online_distiller(TrainConfig(kd_teacher=str(teacher_dir), **settings), student, tokenizer, family,
                                    torch.device("cpu"))
    batch = MultiTaskCollator(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    offline.set_rows(batch)
    ids, mask, labels = batch["rationale_input_ids"], batch["rationale_attention_mask"], batch["rationale_labels"]
    with torch.no_grad():
        ce, tokens, kd_offline, ce_aligned = offline.chunk_sums(student, ids, mask, labels)
        # online on the aligned tokens only: every other target (</s>, the unaligned) masked out
        aligned_labels = torch.full_like(labels, -100)
        for b, row in enumerate(offline.rows):
            ordinals = offline.table[row][0]
            aligned_labels[b, ordinals] = labels[b, ordinals]
        ce_online, count, kd_online, _ = online.chunk_sums(student, ids, mask, aligned_labels)
    assert offline.counts["skipped_short_top_k"] == 0
    assert int(count) == offline.counts["aligned"] == int(tokens) - len(offline.rows) > 40  # all but each </s>
    assert float(ce_online) == pytest.approx(float(ce_aligned), rel=1e-5)
    assert float(kd_offline) == pytest.approx(float(kd_online), rel=1e-4)
    assert float(kd_online) > 1.0  # the student differs from its teacher: the comparison bites
    # a top-k that is not the whole vocabulary gives another value
    narrow = _cached_records(teacher_dir, toy_records(without_rationale=(2,)), k=4)
    small = build_offline_distiller(offline_config, examples, narrow, dataset, tokenizer, family)
    small.set_rows(batch)
    with torch.no_grad():
        assert abs(float(small.chunk_sums(student, ids, mask, labels)[2]) - float(kd_online)) > 1e-3


def test_another_vocabulary_is_refused_with_one_line(models, tmp_path, capsys):
    teacher_dir, student_dir = models
    records = toy_records()
    api_like = {"tokenizer": "gpt-4o-mini", "k": 1, "chosen": ["red", " is"], "chosen_logprobs": [-0.1, -0.2],
                "tokens": [["red"], [" is"]], "logprobs": [[-0.1], [-0.2]]}
    records = [{**r, "teacher_token_topk": api_like} for r in records]
    config = TrainConfig(model=str(student_dir), token_kd_source="cache", token_kd_weight=0.5, max_steps=1,
                         batch_size=8, eval_steps=1)
    with pytest.raises(ValueError) as caught:
        run_training(toy_task(), records, records[:2], [], config, tmp_path / "mismatch")
    assert str(caught.value) == (
        f"option --token-kd-source cache: record 0: the teacher's token 'red' (tokenizer 'gpt-4o-mini') is not a "
        f"token of the student's tokenizer ({str(student_dir)!r}); offline token distillation needs the same "
        "vocabulary")
    for args, message in ((["--token-kd-source", "cache"], "option --token-kd-source cache: give --token-kd-weight"),
                          (["--token-kd-source", "cache", "--token-kd-weight", "0.5", "--kd-teacher", "x"],
                           "option --token-kd-source cache: not supported with --kd-teacher"),
                          (["--token-kd-source", "cache", "--token-kd-weight", "0.5", "--method", "standard"],
                           "not supported with --method standard"),
                          (["--token-kd-source", "api"], "option --token-kd-source: 'teacher' (--kd-teacher) or"),
                          (["--token-kd-rest", "spread"], "option --token-kd-rest: one of renorm, bucket")):
        line = error_line(capsys, ["train", "--task", "esnli", *args, "--output-dir", str(tmp_path / "o")])
        assert message in line, line


@pytest.mark.parametrize("rest", ["renorm", "bucket"])
def test_a_causal_student_taught_by_its_own_stored_top_k_has_zero_kd(tmp_path, rest):
    """A tiny Llama's own teacher-forced top-k on its training rows, stored as a cache would: every rationale token
    but eos aligns, the divergence is 0, and the loss is alpha * label + (1 - alpha) (1 - W) CE over the aligned."""
    from stepdistill.student.families import family_of
    from stepdistill.student.models import build_tiny_llama

    records = toy_records(without_rationale=(5,))
    path = build_tiny_llama(student_texts(records, "[label] ", "[rationale] "), tmp_path / "llama", vocab_size=200)
    model, tokenizer = load_student(path)
    model.eval()
    family = family_of(model)
    rationale = [r for r in records if r["rationale"]]
    rows, labels = family.training_rows(tokenizer, ["[rationale] " + r["input"] for r in rationale],
                                        [r["rationale"] for r in rationale], 256, 16)
    cached, aligned_ce, tokens = {}, 0.0, 0
    for record, row, label in zip(rationale, rows, labels):
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([row])).logits[0].float(), -1)
        positions = [p - 1 for p in range(1, len(row)) if label[p] != -100]
        targets = [row[p + 1] for p in positions]
        tokens += len(targets)
        aligned_ce -= sum(float(logprobs[p, t]) for p, t in zip(positions[:-1], targets[:-1]))  # eos: not stored
        top = logprobs[positions[:-1]].topk(K)
        cached[record["id"]] = {"tokenizer": str(path), "k": K, "chosen": tokenizer.convert_ids_to_tokens(targets[:-1]),
                                "chosen_logprobs": [0.0] * (len(targets) - 1),
                                "tokens": [tokenizer.convert_ids_to_tokens(r) for r in top.indices.tolist()],
                                "logprobs": top.values.tolist()}
    records = [{**r, "teacher_token_topk": cached.get(r["id"])} for r in records]
    alpha, w = 0.5, 0.4
    config = TrainConfig(model=str(path), token_kd_source="cache", token_kd_rest=rest, token_kd_weight=w, alpha=alpha,
                         max_steps=1, batch_size=16, learning_rate=0.0, eval_steps=1, logging_steps=1,
                         max_target_length=16)
    results = run_training(toy_task(), records, records[:2], [], config, tmp_path / "run")
    assert results["family"] == "causal"
    assert results["token_kd_alignment"]["aligned"] == tokens - len(rationale)
    assert results["token_kd_alignment"]["skipped_unaligned"] == len(rationale)
    row = [row for row in read_log(tmp_path / "run") if "loss" in row][0]
    assert row["rationale_token_kd_loss"] == pytest.approx(0.0, abs=1e-5)
    rationale_ce = row["rationale_loss"] * tokens  # one micro-batch: the logged mean is the global one
    want = alpha * row["label_loss"] + (1 - alpha) * (rationale_ce - w * aligned_ce) / tokens
    assert row["loss"] == pytest.approx(want, rel=1e-4)
    assert aligned_ce > 0.5 * rationale_ce  # most of the rationale's loss is on aligned tokens: the test bites


def test_the_cache_field_reaches_the_training_records():
    from stepdistill.rationales import attach_rationales

    topk = {"tokenizer": "t", "k": 1, "chosen": ["a"], "chosen_logprobs": [0.0], "tokens": [["a"]],
            "logprobs": [[0.0]]}
    cache = {"0": {"status": "ok", "raw_output": "a", "rationale": "a", "label": "warm", "token_topk": topk},
             "1": {"status": "parse_error", "raw_output": "b", "rationale": None, "label": None, "error": "no_answer",
                   "token_topk": topk}}
    out = attach_rationales([{"id": "0"}, {"id": "1"}], cache)
    assert out[0]["teacher_token_topk"] == topk and "teacher_token_topk" not in out[1]


def test_length_chunks_give_the_same_loss(models, tmp_path, monkeypatch):
    """Rows of very different lengths: the rationale pass runs in length-sorted chunks, each finding its rows'
    stored top-k; the losses equal those of one unchunked pass."""
    from stepdistill.student import loss

    teacher_dir, student_dir = models
    records = toy_records()
    for i, record in enumerate(records):
        word, label = record["fields"]["text"], record["label"]
        record["input"] += " really" * (i % 4 * 8)
        record["rationale"] += "".join(f", {word} is {label}" for _ in range(i % 4 * 3))
        record["teacher_output"] = f"{record['rationale']}. So the answer is {label}."
    records = _cached_records(teacher_dir, records)
    groups = []
    split = loss.length_sorted_chunks

    def counted(*args, **kwargs):
        groups.append(len(split(*args, **kwargs)))
        return split(*args, **kwargs)

    monkeypatch.setattr(loss, "length_sorted_chunks", counted)
    logs = {}
    for chunks in (1, 4):
        config = TrainConfig(model=str(student_dir), token_kd_source="cache", token_kd_rest="bucket",
                             token_kd_weight=0.5, max_steps=2, batch_size=16, learning_rate=3e-3, eval_steps=2,
                             logging_steps=1, max_target_length=64, length_chunks=chunks)
        results = run_training(toy_task(), records, records[:2], [], config, tmp_path / f"c{chunks}")
        assert results["token_kd_alignment"]["aligned"] > 200
        logs[chunks] = [row for row in read_log(tmp_path / f"c{chunks}") if "loss" in row]
    assert max(groups) > 1  # the chunked run did split its batches
    for one, chunked in zip(logs[1], logs[4]):
        for name in ("loss", "rationale_loss", "rationale_token_kd_loss"):
            assert chunked[name] == pytest.approx(one[name], rel=1e-5), name


def test_mixed_k_uses_the_smallest_and_short_lists_skip(models):
    from types import SimpleNamespace

    from stepdistill.student.offline_kd import build_alignment

    tokenizer = load_student(models[1])[1]
    ids = tokenizer("red is warm").input_ids  # ... </s>
    chosen = tokenizer.convert_ids_to_tokens(ids[:-1])
    other = tokenizer.convert_ids_to_tokens(tokenizer("blue cold").input_ids[:2])
    wide = {"k": 3, "chosen": chosen, "tokens": [[t, *other] for t in chosen],
            "logprobs": [[-0.1, -2.0, -3.0]] * len(chosen)}
    # k 2; its second position lists one token twice: fewer than 2 distinct, skipped
    narrow = {"k": 2, "chosen": chosen, "tokens": [[t, t if j == 1 else other[0]] for j, t in enumerate(chosen)],
              "logprobs": [[-0.1, -2.0]] * len(chosen)}
    examples = [{"id": "a", "rationale": "red is warm"}, {"id": "b", "rationale": "red is warm"}]
    records = [{"id": "a", "teacher_token_topk": wide}, {"id": "b", "teacher_token_topk": narrow}]
    table, counts = build_alignment(examples, records, [{"rationale_labels": ids}] * 2, tokenizer,
                                    SimpleNamespace(labels_follow_inputs=False))
    assert counts == {"rationale_tokens": 2 * len(ids), "aligned": 2 * len(chosen) - 1, "skipped_unaligned": 2,
                      "skipped_short_top_k": 1, "skipped_no_token_topk": 0, "examples_without_token_topk": 0}
    assert table[0][1].shape == (len(chosen), 2) and table[0][2][0].tolist() == pytest.approx([-0.1, -2.0])
    assert table[1][0].tolist() == [j for j in range(len(chosen)) if j != 1]
    broken = {**narrow, "logprobs": narrow["logprobs"][:-1]}
    with pytest.raises(ValueError, match=rf"^option --token-kd-source cache: record b: field token_topk: chosen, "
                                         rf"tokens and logprobs differ in length \({len(chosen)}, {len(chosen)}, "):
        build_alignment(examples, [records[0], {"id": "b", "teacher_token_topk": broken}],
                        [{"rationale_labels": ids}] * 2, tokenizer, SimpleNamespace(labels_follow_inputs=False))
