"""The knowledge-distillation terms of issue 24 (items 3 and 4), as pure functions of logits and hidden states; the
teacher's forward and their place in the loss are in :mod:`.online_kd`.

Token-level divergences between the teacher's and the student's next-token distributions, per target token, with
TRL's GKD conventions (``GKDConfig.beta``: 0 is the KL divergence, 1 the inverse KL):

  ``fkl``  forward KL, KL(p_teacher || p_student) = sum_v p_t(v) (log p_t(v) - log p_s(v))   (mode-covering)
  ``rkl``  reverse KL, KL(p_student || p_teacher) = sum_v p_s(v) (log p_s(v) - log p_t(v))   (mode-seeking)
  ``jsd``  generalised Jensen-Shannon with beta: m = beta p_t + (1 - beta) p_s,
           JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m); beta 0.5 is the ordinary JSD. As in TRL, beta 0
           is exactly ``fkl`` and beta 1 exactly ``rkl`` (the formula itself tends to 0 at both ends)

Both distributions are the softmax of logits / T; each token's divergence is multiplied by T^2 (Hinton et al.), so
the gradient's scale does not change with T (TRL's GKD does not scale; at T = 1 the two agree).

Hidden-state matching (TinyBERT-style): for each (student layer, teacher layer) pair, the mean over the teacher's
width of (W h_s + b - h_t)^2 at every target token, averaged over the pairs; W, b a learned projection where the
widths differ (none where they are equal).
"""

from __future__ import annotations

import math

DIVERGENCES = ("fkl", "rkl", "jsd")


def token_divergence(student_logits, teacher_logits, divergence: str = "fkl", beta: float = 0.5,
                     temperature: float = 1.0):
    """Per-token divergence (shape: the logits' without the vocabulary axis), times T^2. The teacher's side carries
    no gradient."""
    import torch
    import torch.nn.functional as F

    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    student = F.log_softmax(student_logits.float() / temperature, -1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, -1)
    if divergence == "jsd" and beta == 0.0:
        divergence = "fkl"
    elif divergence == "jsd" and beta == 1.0:
        divergence = "rkl"
    if divergence == "fkl":
        per_token = (teacher.exp() * (teacher - student)).sum(-1)
    elif divergence == "rkl":
        per_token = (student.exp() * (student - teacher)).sum(-1)
    else:
        # log m, computed in log space: log(beta p_t + (1 - beta) p_s)
        mixture = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log(1 - beta)]), 0)
        per_token = (beta * (teacher.exp() * (teacher - mixture)).sum(-1)
                     + (1 - beta) * (student.exp() * (student - mixture)).sum(-1))
    return per_token * temperature ** 2


def default_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Evenly spaced pairs (TinyBERT's uniform map): student layer s (1..L_s) -> teacher layer round(s L_t / L_s);
    the last layers are paired with each other."""
    return [(s, round(s * teacher_layers / student_layers)) for s in range(1, student_layers + 1)]


def parse_layer_map(spec: str | None, student_layers: int, teacher_layers: int,
                    option: str = "--hidden-layers") -> list[tuple[int, int]]:
    """``"s1:t1,s2:t2"`` (hidden-state indices: 0 = the embeddings, k = the output of block k) checked against
    the layer counts; None or "" = :func:`default_layer_map`."""
    import re

    if not spec:
        return default_layer_map(student_layers, teacher_layers)
    if not re.fullmatch(r"\s*\d+\s*:\s*\d+\s*(,\s*\d+\s*:\s*\d+\s*)*", spec):
        raise ValueError(f"option {option}: expected student:teacher layer pairs like 1:2,2:4, got {spec!r}")
    pairs = [tuple(int(x) for x in pair.split(":")) for pair in spec.split(",")]
    for s, t in pairs:
        if s > student_layers or t > teacher_layers:
            raise ValueError(f"option {option}: pair {s}:{t} is out of range (student layers 0-{student_layers}, "
                             f"teacher layers 0-{teacher_layers}; 0 = the embeddings)")
    return pairs


def check_layer_map_syntax(spec: str | None, option: str = "--hidden-layers") -> None:
    """The syntax alone (the layer counts are known only once the models load)."""
    if spec:
        parse_layer_map(spec, 10**9, 10**9, option)


def hidden_projections(pairs: list[tuple[int, int]], student_width: int, teacher_width: int):
    """One ``nn.Linear(student_width, teacher_width)`` per pair where the widths differ, else identities."""
    import torch

    layer = (lambda: torch.nn.Linear(student_width, teacher_width)) if student_width != teacher_width \
        else torch.nn.Identity
    return torch.nn.ModuleList([layer() for _ in pairs])


def hidden_mse_sum(student_states, teacher_states, pairs, projections):
    """Sum over the rows (target tokens) of the mean squared error over the teacher's width, averaged over the
    layer pairs. ``*_states[k]``: (tokens, width) states of hidden-state index k."""
    total = None
    for (s, t), project in zip(pairs, projections):
        error = (project(student_states[s].float()) - teacher_states[t].detach().float()).pow(2).mean(-1).sum()
        total = error if total is None else total + error
    return total / len(pairs)
