"""Token-level logit distillation and hidden-state matching from a local teacher (issue 24, items 3 and 4)."""

import json
import math

import pytest
import torch

from stepdistill.student.kd import default_layer_map, hidden_mse_sum, parse_layer_map, token_divergence
from stepdistill.student.models import build_tiny_llama, build_tiny_student, load_student, student_texts
from stepdistill.student.trainer import TrainConfig, read_log, run_training

from cli_helpers import error_line
from student_toy import toy_records, toy_task

STUDENT_LOGITS = [[1.0, -0.5, 0.3], [0.2, 0.9, -1.1]]
TEACHER_LOGITS = [[0.4, 0.1, -0.7], [2.0, -0.3, 0.5]]
SMALL = dict(d_kv=8, d_ff=64, num_heads=4)


def _softmax(row, t):
    exps = [math.exp(x / t) for x in row]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _hand(divergence, beta, t):
    out = []
    for s_row, t_row in zip(STUDENT_LOGITS, TEACHER_LOGITS):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        if divergence == "fkl":
            value = _kl(p_t, p_s)
        elif divergence == "rkl":
            value = _kl(p_s, p_t)
        else:
            m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s)]
            value = beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)
        out.append(value * t * t)
    return out


@pytest.mark.parametrize("divergence, beta, temperature", [
    ("fkl", 0.5, 1.0), ("rkl", 0.5, 1.0), ("jsd", 0.5, 1.0), ("jsd", 0.1, 1.0), ("jsd", 0.9, 2.0), ("fkl", 0.5, 3.0)])
def test_each_divergence_equals_a_hand_computation(divergence, beta, temperature):
    got = token_divergence(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), divergence, beta, temperature)
    assert got.tolist() == pytest.approx(_hand(divergence, beta, temperature), rel=1e-5)
    assert min(got.tolist()) > 1e-3  # different distributions: a real, positive divergence


def test_jsd_ends_are_trls_forward_and_reverse_kl_and_identical_distributions_give_zero():
    s, t = torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS)
    assert torch.equal(token_divergence(s, t, "jsd", 0.0), token_divergence(s, t, "fkl"))
    assert torch.equal(token_divergence(s, t, "jsd", 1.0), token_divergence(s, t, "rkl"))
    assert token_divergence(s, t, "fkl").tolist() == pytest.approx(_hand("fkl", 0, 1.0), rel=1e-5)
    for divergence in ("fkl", "rkl", "jsd"):
        assert token_divergence(s, s.clone(), divergence, 0.3, 2.0).abs().max() < 1e-6
    grad = s.clone().requires_grad_(True)
    token_divergence(grad, t, "rkl").sum().backward()
    assert grad.grad.abs().sum() > 0  # the student's side carries the gradient


def test_hidden_mse_equals_a_hand_computation_and_layer_maps():
    student = {0: torch.tensor([[1.0, 2.0], [0.0, -1.0]]), 2: torch.tensor([[0.5, 0.5], [1.0, 1.0]])}
    teacher = {1: torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]), 4: torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])}
    projection = torch.nn.Linear(2, 3)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        projection.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    # W h + b: pair (0, 1): [1, 2, 4] and [0, -1, 0]; pair (2, 4): [0.5, 0.5, 2] and [1, 1, 3]
    first = ((0 + 4 + 4) / 3) + ((0 + 4 + 1) / 3)
    second = ((0.25 + 0.25 + 4) / 3) + ((0 + 1 + 0) / 3)
    got = hidden_mse_sum(student, teacher, [(0, 1), (2, 4)], [projection, projection])
    assert got.item() == pytest.approx((first + second) / 2, rel=1e-6)
    assert default_layer_map(2, 4) == [(1, 2), (2, 4)]
    assert default_layer_map(3, 4) == [(1, 1), (2, 3), (3, 4)]
    assert parse_layer_map("0:0, 2:3", 2, 4) == [(0, 0), (2, 3)]
    with pytest.raises(ValueError, match=r"option --hidden-layers: pair 3:1 is out of range \(student layers 0-2"):
        parse_layer_map("3:1", 2, 4)
    with pytest.raises(ValueError, match="expected student:teacher layer pairs like 1:2,2:4"):
        parse_layer_map("1-2", 2, 4)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A saved tiny T5 teacher (4 + 4 layers, 64 wide) on the toy task's text."""
    texts = student_texts(toy_records(), "[label] ", "[rationale] ")
    return build_tiny_student(texts, tmp_path_factory.mktemp("kd") / "teacher", seed=5, d_model=64,
                              num_layers=4, num_decoder_layers=4, **SMALL)


def _narrow_student(teacher_dir, out):
    """A 32-wide, 2 + 2 layer T5 with the teacher's tokenizer (so the widths differ: a learned projection)."""
    from transformers import T5ForConditionalGeneration

    teacher, tokenizer = load_student(teacher_dir)
    config = teacher.config.to_dict() | {"d_model": 32, "num_layers": 2, "num_decoder_layers": 2}
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(type(teacher.config)(**config))
    model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_micro_batches_give_the_same_update_with_trained_projections(teacher_dir, tmp_path):
    """1 x 8 and 4 x 2 (micro-batches): the same losses and the same trained weights, projections included."""
    from safetensors.torch import load_file

    records = toy_records(without_rationale=(2, 6))[:8]
    student_dir = _narrow_student(teacher_dir, tmp_path / "narrow")
    runs = {}
    for cap in (None, 2):
        config = TrainConfig(model=str(student_dir), kd_teacher=str(teacher_dir), token_kd_weight=0.6,
                             kd_divergence="jsd", jsd_beta=0.3, kd_temperature=2.0, hidden_weight=0.5,
                             hidden_layers="1:2,2:4", alpha=0.4, max_steps=3, batch_size=8,
                             per_device_batch_size=cap, learning_rate=3e-3, eval_steps=3, logging_steps=1,
                             max_target_length=16, keep_checkpoints=True, seed=3)
        run = tmp_path / f"cap-{cap}"
        results = run_training(toy_task(), records, records[:4], [], config, run)
        assert results["gradient_accumulation_steps"] == (1 if cap is None else 4)
        assert results["kd"] == {"teacher": str(teacher_dir), "token_kd_weight": 0.6, "divergence": "jsd",
                                 "jsd_beta": 0.3, "temperature": 2.0, "hidden_weight": 0.5,
                                 "hidden_layers": "1:2,2:4"}
        # one teacher pass per task and micro-batch (a micro-batch without rationales has no rationale pass)
        assert results["kd_teacher_forwards"] == 6 if cap is None else 12 < results["kd_teacher_forwards"] < 24
        saved = load_file(run / "checkpoints" / "checkpoint-3" / "model.safetensors")
        final = load_file(run / "model" / "model.safetensors")
        # the projections (32 -> 64 wide) train with the student and checkpoints keep them; model/ is plain
        assert saved["kd_projections.0.weight"].shape == (64, 32) and len([k for k in saved if "kd_" in k]) == 4
        assert not [k for k in final if "kd_" in k]
        runs[cap] = [row for row in read_log(run) if "loss" in row], saved
    (one_log, one), (micro_log, micro) = runs[None], runs[2]
    assert len(one_log) == 3 and one_log[0]["loss"] > 1.0
    assert [row["loss"] for row in micro_log] == pytest.approx([row["loss"] for row in one_log], rel=1e-5)
    initial = load_student(student_dir)[0].state_dict()
    moved = torch.cat([(one[k] - initial[k]).flatten() for k in one if k in initial]).norm()
    apart = torch.cat([(micro[k] - one[k]).flatten() for k in one]).norm()
    assert moved > 0.05 and apart < 1e-4 * moved, (float(moved), float(apart))
    assert set(one_log[0]) >= {"label_token_kd_loss", "rationale_token_kd_loss", "label_hidden_loss",
                               "rationale_hidden_loss"}


def test_end_to_end_with_a_shrunk_student_the_first_step_loss_is_the_hand_composed_loss(teacher_dir, tmp_path):
    """A tiny saved T5 teacher, a student cut from it: the first logged loss equals alpha * label task +
    (1 - alpha) * rationale task, each (1 - w) CE + w KD + w_h MSE over its target tokens (computed here with the
    models' own forward); the distillation terms fall while it trains; model/ reloads for predict."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from stepdistill.student.predict import load_trained_student, predict

    records = toy_records(without_rationale=(3,))
    alpha, w, wh = 0.3, 0.7, 0.2
    config = TrainConfig(model=f"shrink:{teacher_dir}:enc=0,3;dec=1,3", kd_teacher=str(teacher_dir),
                         token_kd_weight=w, kd_divergence="fkl", kd_temperature=1.5, hidden_weight=wh, alpha=alpha,
                         max_steps=12, batch_size=16, learning_rate=3e-3, eval_steps=12, logging_steps=1,
                         max_target_length=16)
    run = tmp_path / "run"
    results = run_training(toy_task(), records, records[:4], records[:4], config, run)
    assert results["kd"]["hidden_layers"] is None and results["model"].startswith("shrink:")
    tokenizer = AutoTokenizer.from_pretrained(run / "student-init")
    student = AutoModelForSeq2SeqLM.from_pretrained(run / "student-init").eval()
    teacher = AutoModelForSeq2SeqLM.from_pretrained(teacher_dir).eval()
    assert student.config.num_decoder_layers == 2

    def task_loss(inputs, targets):
        enc = tokenizer(inputs, padding=True, return_tensors="pt")
        tgt = tokenizer(targets, padding=True, return_tensors="pt")
        labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
        with torch.no_grad():
            s = student(**enc, labels=labels, output_hidden_states=True)
            t = teacher(**enc, labels=labels, output_hidden_states=True)
        keep = labels.ne(-100)
        n = int(keep.sum())
        kd = token_divergence(s.logits[keep], t.logits[keep], "fkl", 0.5, 1.5).sum().item() / n
        # the default map of 2 student to 4 teacher decoder layers: 1 -> 2, 2 -> 4; equal widths: no projection
        mse = sum((s.decoder_hidden_states[a][keep] - t.decoder_hidden_states[b][keep]).pow(2).mean(-1).sum().item()
                  for a, b in [(1, 2), (2, 4)]) / 2 / n
        return (1 - w) * s.loss.item() + w * kd + wh * mse, kd, mse

    label, label_kd, _ = task_loss(["[label] " + r["input"] for r in records], [r["label"] for r in records])
    rationale, _, rationale_mse = task_loss(["[rationale] " + r["input"] for r in records if r["rationale"]],
                                            [r["rationale"] for r in records if r["rationale"]])
    log = [row for row in read_log(run) if "loss" in row]
    assert log[0]["loss"] == pytest.approx(alpha * label + (1 - alpha) * rationale, rel=1e-4)
    assert log[0]["label_token_kd_loss"] == pytest.approx(label_kd, rel=1e-4)
    assert log[0]["rationale_hidden_loss"] == pytest.approx(rationale_mse, rel=1e-4)
    assert log[-1]["label_token_kd_loss"] < 0.7 * log[0]["label_token_kd_loss"]
    assert log[-1]["rationale_hidden_loss"] < log[0]["rationale_hidden_loss"]
    rows = predict(load_trained_student(run, device="cpu"), [r["fields"] for r in records[:2]])
    assert len(rows) == 2 and all(row["prediction"] in ("warm", "cold") for row in rows)


def test_identical_teacher_and_student_give_zero_kd_and_a_vocabulary_mismatch_is_one_line(teacher_dir, tmp_path,
                                                                                         capsys):
    records = toy_records()
    config = TrainConfig(model=str(teacher_dir), kd_teacher=str(teacher_dir), token_kd_weight=1.0,
                         kd_divergence="rkl", hidden_weight=1.0, max_steps=1, batch_size=8, learning_rate=0.0,
                         eval_steps=1, logging_steps=1, max_target_length=16)
    run_training(toy_task(), records, records[:2], [], config, tmp_path / "same")
    row = [row for row in read_log(tmp_path / "same") if "loss" in row][0]
    assert row["loss"] == pytest.approx(0.0, abs=1e-6) and row["label_loss"] > 0.5  # CE is real; KD and MSE are 0
    assert row["label_token_kd_loss"] == pytest.approx(0.0, abs=1e-6)
    assert row["rationale_hidden_loss"] == pytest.approx(0.0, abs=1e-6)

    other = build_tiny_student(["completely different words here"] * 30, tmp_path / "other", vocab_size=60, **SMALL)
    config = TrainConfig(model=str(teacher_dir), kd_teacher=str(other), token_kd_weight=0.5, max_steps=1,
                         batch_size=8, eval_steps=1)
    with pytest.raises(ValueError) as caught:
        run_training(toy_task(), records, records[:2], [], config, tmp_path / "mismatch")
    teacher_tokens = len(load_student(teacher_dir)[1])
    assert str(caught.value).startswith(f"option --kd-teacher: {other}: the vocabularies differ (teacher: ")
    assert f"student: {teacher_tokens} logits, {teacher_tokens} tokens" in str(caught.value)
    llama = build_tiny_llama(student_texts(records, "[label] ", "[rationale] "), tmp_path / "llama", vocab_size=200)
    config = TrainConfig(model=str(teacher_dir), kd_teacher=str(llama), token_kd_weight=0.5, max_steps=1,
                         batch_size=8, eval_steps=1)
    with pytest.raises(ValueError, match="the teacher is causal and the student seq2seq; token distillation needs"):
        run_training(toy_task(), records, records[:2], [], config, tmp_path / "family")
    for args, message in ((["--token-kd-weight", "0.5"], "needs a teacher (--kd-teacher PATH)"),
                          (["--kd-teacher", "x"], "give --token-kd-weight and/or --hidden-weight above 0"),
                          (["--kd-teacher", "x", "--token-kd-weight", "1.5"], "--token-kd-weight: must be in [0, 1]"),
                          (["--kd-teacher", "x", "--token-kd-weight", "1", "--kd-divergence", "kl"],
                           "--kd-divergence: one of fkl, rkl, jsd"),
                          (["--kd-teacher", "x", "--token-kd-weight", "1", "--hidden-layers", "1:1"],
                           "option --hidden-layers: needs --hidden-weight above 0"),
                          (["--kd-teacher", "x", "--hidden-weight", "1", "--hidden-layers", "1-2"],
                           "option --hidden-layers: expected student:teacher layer pairs like 1:2,2:4"),
                          (["--kd-teacher", "x", "--token-kd-weight", "1", "--shared-encoder", "true"],
                           "option --kd-teacher: not supported with --shared-encoder")):
        line = error_line(capsys, ["train", "--task", "esnli", *args, "--output-dir", str(tmp_path / "o")])
        assert message in line, line


def test_a_causal_student_cut_from_a_llama_teacher_has_the_hand_composed_first_step_loss(tmp_path):
    """Decoder-only: the logit at position t predicts token t + 1, so KD and the hidden states are taken at the
    positions that predict target tokens; checked row by row without padding."""
    from transformers import AutoModelForCausalLM

    from stepdistill.student.families import CausalFamily

    records = toy_records(without_rationale=(5,))
    teacher_dir = build_tiny_llama(student_texts(records, "[label] ", "[rationale] "), tmp_path / "teacher", seed=4,
                                   vocab_size=300, num_hidden_layers=3)
    alpha, w, wh = 0.6, 0.4, 0.3
    config = TrainConfig(model=f"shrink:{teacher_dir}:layers=0,2", kd_teacher=str(teacher_dir), token_kd_weight=w,
                         kd_divergence="rkl", hidden_weight=wh, hidden_layers="2:3", alpha=alpha, max_steps=1,
                         batch_size=16, learning_rate=1e-3, eval_steps=1, logging_steps=1, max_target_length=16)
    run = tmp_path / "run"
    assert run_training(toy_task(), records, records[:4], [], config, run)["family"] == "causal"
    student = AutoModelForCausalLM.from_pretrained(run / "student-init").eval()
    teacher, tokenizer = load_student(teacher_dir)
    family = CausalFamily()

    def task_loss(prompts, targets):
        rows, labels = family.training_rows(tokenizer, prompts, targets, 1024, 16)
        ce = kd = mse = n = 0.0
        for row, label in zip(rows, labels):
            ids = torch.tensor([row])
            with torch.no_grad():
                s = student(input_ids=ids, output_hidden_states=True)
                t = teacher(input_ids=ids, output_hidden_states=True)
            target = torch.tensor(label[1:])
            keep = target.ne(-100)
            ce += torch.nn.functional.cross_entropy(s.logits[0, :-1][keep], target[keep], reduction="sum").item()
            kd += token_divergence(s.logits[0, :-1][keep], t.logits[0, :-1][keep], "rkl").sum().item()
            mse += (s.hidden_states[2][0, :-1][keep] - t.hidden_states[3][0, :-1][keep]).pow(2).mean(-1).sum().item()
            n += int(keep.sum())
        return ((1 - w) * ce + w * kd + wh * mse) / n

    label = task_loss(["[label] " + r["input"] for r in records], [r["label"] for r in records])
    rationale = task_loss(["[rationale] " + r["input"] for r in records if r["rationale"]],
                          [r["rationale"] for r in records if r["rationale"]])
    first = [row for row in read_log(run) if "loss" in row][0]
    assert first["loss"] == pytest.approx(alpha * label + (1 - alpha) * rationale, rel=1e-4)
    assert first["label_token_kd_loss"] > 1e-3 and first["rationale_hidden_loss"] > 1e-3


def test_a_resumed_run_keeps_the_trained_projections(teacher_dir, tmp_path):
    """The projections are part of the checkpoints: 2 steps, then resumed to 4, train what 4 steps in one go do."""
    from safetensors.torch import load_file

    records = toy_records()[:8]
    student_dir = _narrow_student(teacher_dir, tmp_path / "narrow")
    base = dict(model=str(student_dir), kd_teacher=str(teacher_dir), token_kd_weight=0.5, hidden_weight=1.0,
                batch_size=8, learning_rate=3e-3, eval_steps=1, logging_steps=1, max_target_length=16,
                keep_checkpoints=True)
    run_training(toy_task(), records, records[:2], [], TrainConfig(max_steps=4, **base), tmp_path / "whole")
    run_training(toy_task(), records, records[:2], [], TrainConfig(max_steps=2, **base), tmp_path / "parts")
    two = load_file(tmp_path / "parts" / "checkpoints" / "checkpoint-2" / "model.safetensors")
    resumed = run_training(toy_task(), records, records[:2], [],
                           TrainConfig(max_steps=4, resume_from_checkpoint="last", **base), tmp_path / "parts")
    assert resumed["resumed_from_step"] == 2
    whole = load_file(tmp_path / "whole" / "checkpoints" / "checkpoint-4" / "model.safetensors")
    parts = load_file(tmp_path / "parts" / "checkpoints" / "checkpoint-4" / "model.safetensors")
    name = "kd_projections.1.weight"
    assert not torch.allclose(two[name], parts[name])  # it trained on after the resume
    assert all(torch.allclose(whole[k], parts[k], rtol=1e-4, atol=1e-6) for k in whole), \
        [k for k in whole if not torch.allclose(whole[k], parts[k], rtol=1e-4, atol=1e-6)]


@pytest.mark.slow  # three processes start (73 s on the shared 2-core machine)
def test_two_processes_match_one_with_a_teacher(teacher_dir, tmp_path):
    """DDP: the projections are a submodule of the student, so their gradients are averaged like its own; the
    distillation terms are normalised by the global token counts: 2 processes x 2 micro-batches = 1 x 4."""
    import sys

    from safetensors.torch import load_file

    from test_multiprocess import HERE, _free_port, _run

    student = str(_narrow_student(teacher_dir, tmp_path / "narrow"))
    worker = str(HERE / "ddp_worker.py")
    _run([sys.executable, worker, str(tmp_path / "one"), "random", student, str(teacher_dir)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          worker, str(tmp_path / "two"), "random", student, str(teacher_dir)], tmp_path)
    loss = lambda run: [row["loss"] for row in read_log(tmp_path / run) if "loss" in row]
    assert len(loss("one")) == 4 and loss("two") == pytest.approx(loss("one"), rel=1e-4)
    kd = lambda run: [row["label_hidden_loss"] for row in read_log(tmp_path / run) if "loss" in row]
    assert min(kd("one")) > 1e-3
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["processes"] == 2 and results["kd"]["hidden_layers"] == "1:2,2:4"
    one, two = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("one", "two"))
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6) for k in one)
