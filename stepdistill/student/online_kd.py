"""Online distillation from a local teacher (issue 24, items 3 and 4): ``--kd-teacher PATH`` (a checkpoint folder,
a run folder or an export, :mod:`.local_models`) runs a teacher-forced forward (no gradients, eval mode) on the
SAME rows as the student, on the target tokens of each task (label and rationale), and adds to each task's loss

    task_loss = (1 - token_kd_weight) * CE + token_kd_weight * KD + hidden_weight * MSE

each term summed over the task's target tokens and divided by the task's target-token count over the whole global
batch, as the cross-entropy is (:mod:`.loss`): any micro-batch or device split gives the same update. KD and MSE
are :mod:`.kd`'s. ``loss = alpha * label_task + (1 - alpha) * rationale_task`` as before.

Hidden states are matched at the target-token positions only: the decoder's states for a seq2seq pair (the
encoder is not matched), the states at the positions whose logits predict the target tokens for a causal pair. The
projections (where the widths differ) are a submodule of the student (``kd_projections``) so that they train,
synchronise across processes and resume with it; the final ``model/`` is saved without them.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

PROJECTIONS = "kd_projections"
TASKS = ("label", "rationale")


def kd_enabled(config) -> bool:
    return bool(config.kd_teacher) and (config.token_kd_weight > 0 or config.hidden_weight > 0)


def kd_settings(config) -> dict[str, Any]:
    """What results.json records (nothing when distillation from a teacher is off)."""
    if not kd_enabled(config):
        return {}
    return {"kd": {"teacher": config.kd_teacher, "token_kd_weight": config.token_kd_weight,
                   "divergence": config.kd_divergence, "jsd_beta": config.jsd_beta,
                   "temperature": config.kd_temperature, "hidden_weight": config.hidden_weight,
                   "hidden_layers": config.hidden_layers}}


def _vocabulary(tokenizer) -> dict[str, int]:
    return tokenizer.get_vocab()


def check_compatible(teacher, teacher_tokenizer, student, student_tokenizer, path: str) -> None:
    """One ``error:`` line when the teacher cannot teach this student token by token: another family, another
    vocabulary (size or tokens), another decoder start."""
    from .families import family_of

    where = f"option --kd-teacher: {path}"
    teacher_family, student_family = family_of(teacher).name, family_of(student).name
    if teacher_family != student_family:
        raise ValueError(f"{where}: the teacher is {teacher_family} and the student {student_family}; token "
                         "distillation needs the same family")
    sizes = (teacher.config.get_text_config().vocab_size, student.config.get_text_config().vocab_size)
    if sizes[0] != sizes[1] or _vocabulary(teacher_tokenizer) != _vocabulary(student_tokenizer):
        raise ValueError(f"{where}: the vocabularies differ (teacher: {sizes[0]} logits, {len(teacher_tokenizer)} "
                         f"tokens, {type(teacher_tokenizer).__name__}; student: {sizes[1]} logits, "
                         f"{len(student_tokenizer)} tokens, {type(student_tokenizer).__name__}); token "
                         "distillation needs the same tokenizer")
    if teacher_family == "seq2seq":
        starts = (teacher.config.decoder_start_token_id, student.config.decoder_start_token_id)
        if starts[0] != starts[1]:
            raise ValueError(f"{where}: decoder_start_token_id {starts[0]} differs from the student's {starts[1]}")


class OnlineDistiller:
    """The teacher, the layer map and projections, and the pending per-task KD sums of one ``compute_loss``."""

    def __init__(self, config, teacher, student, family, device):
        from .kd import hidden_projections, parse_layer_map

        self.config = config
        self.family = family
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.pairs: list[tuple[int, int]] = []
        if config.hidden_weight > 0:
            student_layers, student_width = _layers_and_width(student)
            teacher_layers, teacher_width = _layers_and_width(teacher)
            self.pairs = parse_layer_map(config.hidden_layers, student_layers, teacher_layers)
            # a submodule of the student: trained, synchronised by DDP and checkpointed with it
            student.add_module(PROJECTIONS, hidden_projections(self.pairs, student_width, teacher_width).to(device))
        self.pending: dict[str, tuple[Any, Any, Any]] = {}
        self.teacher_seconds = 0.0
        self.teacher_calls = 0

    @property
    def log_names(self) -> list[str]:
        names = []
        for task in TASKS:
            names += [f"{task}_token_kd_loss"] if self.config.token_kd_weight > 0 else []
            names += [f"{task}_hidden_loss"] if self.config.hidden_weight > 0 else []
        return names

    def chunk_sums(self, model, input_ids, attention_mask, labels, unwrapped=None):
        """(CE sum, target tokens, KD sum, MSE sum) of one right-padded chunk: a ``token_loss_sum`` pass."""
        import torch
        import torch.nn.functional as F

        from .kd import hidden_mse_sum, token_divergence

        hidden = self.config.hidden_weight > 0
        student_logits, student_states, targets = self._forward(model, input_ids, attention_mask, labels, hidden,
                                                                 unwrapped)
        start = time.perf_counter()
        with torch.no_grad():
            teacher_logits, teacher_states, _ = self._forward(self.teacher, input_ids, attention_mask, labels, hidden)
        self.teacher_seconds += time.perf_counter() - start
        self.teacher_calls += 1
        ce = F.cross_entropy(student_logits.float(), targets, reduction="sum")
        zero = ce.new_zeros(())
        kd = token_divergence(student_logits, teacher_logits, self.config.kd_divergence, self.config.jsd_beta,
                              self.config.kd_temperature).sum() if self.config.token_kd_weight > 0 else zero
        projections = getattr(unwrapped or model, PROJECTIONS, None)
        mse = hidden_mse_sum(student_states, teacher_states, self.pairs, projections) if hidden and len(targets) \
            else zero
        return ce, targets.new_tensor(len(targets)), kd, mse

    def _forward(self, model, input_ids, attention_mask, labels, hidden: bool, unwrapped=None):
        """(logits at the target tokens (tokens, vocab), hidden states there per index or None, target ids)."""
        if self.family.labels_follow_inputs:  # causal: the logit at position t predicts token t + 1
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
            targets = labels[:, 1:]
            keep = targets.ne(-100)
            states = [h[:, :-1][keep] for h in out.hidden_states] if hidden else None
            return out.logits[:, :-1][keep], states, targets[keep]
        base = unwrapped if unwrapped is not None else model
        decoder_input_ids = getattr(base, "prepare_decoder_input_ids_from_labels")(labels=labels)
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                    output_hidden_states=hidden)
        keep = labels.ne(-100)
        states = [h[keep] for h in out.decoder_hidden_states] if hidden else None
        return out.logits[keep], states, labels[keep]

    def record(self, task: str, kd, mse, count) -> None:
        self.pending[task] = (kd, mse, count)

    def compose(self, label_sum, rationale_sum, log: dict[str, list[float]] | None):
        """Each task's summed loss with its KD and MSE terms (same token count to divide by); per-micro-batch
        means of the terms into ``log`` (training)."""
        w, wh = self.config.token_kd_weight, self.config.hidden_weight
        sums = []
        for task, ce in zip(TASKS, (label_sum, rationale_sum)):
            if task not in self.pending:
                sums.append(ce)
                continue
            kd, mse, count = self.pending[task]
            sums.append((1 - w) * ce + w * kd + wh * mse)
            if log is not None and count > 0:
                if w > 0:
                    log[f"{task}_token_kd_loss"].append((kd / count).item())
                if wh > 0:
                    log[f"{task}_hidden_loss"].append((mse / count).item())
        self.pending = {}
        return sums

    @contextlib.contextmanager
    def without_projections(self, model):
        """The student without ``kd_projections`` inside the block (the final save: a plain checkpoint)."""
        target = getattr(model, "module", model)
        projections = target._modules.pop(PROJECTIONS, None)
        try:
            yield
        finally:
            if projections is not None:
                target.add_module(PROJECTIONS, projections)

    def timing(self) -> dict[str, Any]:
        return {"kd_teacher_forward_seconds": round(self.teacher_seconds, 3), "kd_teacher_forwards": self.teacher_calls}


def _layers_and_width(model) -> tuple[int, int]:
    """(number of decoder layers, hidden width) of a seq2seq or causal model."""
    config = model.config.get_text_config(decoder=True)
    layers = getattr(config, "num_decoder_layers", None) or getattr(config, "num_hidden_layers", None) \
        or getattr(config, "num_layers")
    width = getattr(config, "d_model", None) or getattr(config, "hidden_size")
    return int(layers), int(width)


def build_online_distiller(config, student, tokenizer, family, device) -> OnlineDistiller | None:
    """The distiller of a run with ``--kd-teacher`` (None without): the teacher loaded and checked."""
    if not kd_enabled(config):
        return None
    from .local_models import load_local_model

    teacher, teacher_tokenizer = load_local_model(config.kd_teacher, "--kd-teacher")
    base = student.get_base_model() if hasattr(student, "get_base_model") else student
    check_compatible(teacher, teacher_tokenizer, base, tokenizer, config.kd_teacher)
    return OnlineDistiller(config, teacher, base, family, device)
