"""Student training settings: one typed definition that the trainer, the CLI and experiment files all read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# standard: input -> label; step-by-step: the paper's two tasks (label, rationale) with prefixes; the paper's
# ablations, one task each: single-task (target "<rationale> So the answer is <label>." in the task's answer format,
# label parsed from generated text), single-task-label-first (target "<label>. <rationale>", candidates ranked as
# the target's start), rationale-input (the teacher's rationale appended to the input, target the label); distill:
# knowledge distillation on the label task, hard labels (label_source) and soft labels (student/soft_labels.py)
METHODS = ("standard", "step-by-step", "single-task", "single-task-label-first", "rationale-input", "distill")
SOFT_LABEL_METHODS = ("standard", "step-by-step", "distill")  # the methods whose label task can take soft labels
DISTILL_SOFT_WEIGHT = 0.5  # method distill's soft_weight when none is given
LABEL_SOURCES = ("gold", "teacher")
# which of a self-consistency cache's K sampled rationales (generate --n K) the rationale task trains on: "one" (the
# cache's chosen rationale), "all" (every sample that parsed), "vote-agree" / "gold-agree" (the samples whose label
# agrees with the vote / with gold); the label task counts each example once whatever this is (SCoTD-style)
RATIONALE_SAMPLES = ("one", "all", "vote-agree", "gold-agree")
META_FILE = "stepdistill.json"  # written next to the saved student: task and prefixes for `predict`


@dataclass
class TrainConfig:
    """Student training settings. ``batch_size`` is the GLOBAL batch: per-device batch and gradient accumulation
    are derived from the number of processes, so results do not depend on it."""

    # "tiny" (T5), "tiny-llama" (decoder-only), "minilm2minilm", "<encoder>+<decoder>", "smollm2-135m", a hub name
    # or a local checkpoint folder (seq2seq or causal LM: the family comes from its config's is_encoder_decoder), or
    # "shrink:PATH:layers=0,2" (those layers of a local checkpoint, run folder or export; T5: "enc=0,2;dec=1" too)
    model: str = "tiny"
    # "standard" | "step-by-step" | the paper's ablations "single-task" (target: rationale then label, label parsed
    # from generated text), "single-task-label-first" (target: label then rationale, candidates ranked as its start),
    # "rationale-input" (teacher rationale appended to the input; valid/test need teacher rationales), "distill"
    # (label task only, hard labels from label_source plus the teacher's soft labels: see soft_weight)
    method: str = "step-by-step"
    # rationale-input: valid/test examples without a usable teacher rationale are an "error" (the default; the
    # message names split and count), or read "bare" (the input alone; counted in results.json)
    missing_rationale: str = "error"
    # rationale-input: also score test with the STUDENT's own rationales in place of the teacher's, read from this
    # JSONL (rows with "id" and "rationale": a step-by-step run's predictions_test.jsonl with generate_rationales)
    student_rationales: str | None = None
    label_source: str = "gold"  # "gold" | "teacher"
    alpha: float = 0.5  # weight of the label loss (step-by-step)
    label_prefix: str = "[label] "
    rationale_prefix: str = "[rationale] "
    max_steps: int = 10_000
    batch_size: int = 64
    # micro-batch cap (gradient accumulation up to batch_size): less memory, the same update. None = on CPU, the
    # most rows under a budget of rows x row tokens x width x layers (arguments.auto_micro_batch), else whole batches
    per_device_batch_size: int | None = None
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_steps: int = 250
    save_steps: int | None = None  # None = eval_steps (must be a multiple of eval_steps)
    eval_batch_size: int = 64
    seed: int = 0
    bf16: bool = False  # bf16 autocast (GPU or CPUs with AVX-512 bf16/AMX); training and evaluation
    fp16: bool = False
    max_input_length: int = 1024
    max_target_length: int = 256  # rationale (and label) tokens in training; rationale generation length
    label_max_new_tokens: int = 32  # generation length of free-form labels (equations, numbers)
    # length-sorted global batches: less padding (1.4x faster on e-SNLI, tiny T5, CPU) but batches of similar
    # length; on e-SNLI that cost accuracy in experiments/bench_trainer.py (NLI labels correlate with length)
    group_by_length: bool = False
    # each micro-batch runs in up to this many length-sorted chunks, each padded only to its own longest row (split
    # only where that saves 20% or more of the padded area): the same loss and update; None = default_length_chunks()
    length_chunks: int | None = None
    # with micro-batches (gradient accumulation), the rows of each step are dealt to them longest first: the same
    # update, less padding
    sort_micro_batches: bool = True
    # ranking of candidate labels: "sum" of their tokens' log-probabilities, or the per-token "mean" (fairer to
    # long multi-token answers); None = the task's rank_normalization, else "sum"
    rank_normalization: str | None = None
    # seq2seq students: the task prefix goes to the decoder (forced tokens, no loss) and the encoder reads the bare
    # input, so step-by-step runs the encoder once per batch for both tasks; a different model
    # from the paper's two-pass method: compare both (experiments/bench_trainer.py)
    shared_encoder: bool = False
    lora_r: int | None = None  # LoRA rank (peft adapters on the student); None or 0 = full fine-tuning
    lora_alpha: int = 16  # LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)
    lora_dropout: float = 0.0  # dropout on the LoRA branch
    # modules that get adapters; None = peft's default for the architecture (T5: q, v; Llama: q_proj, v_proj)
    lora_target_modules: list[str] | None = None
    generate_rationales: bool = False  # also generate a rationale for every test example (inspection only)
    # step-by-step: also score test by generating each rationale first and predicting the label from the input with
    # it appended (test_accuracy_rationale_first), to compare with plain [label] prediction
    rationale_first_eval: bool = False
    report_to: str = "none"  # "tensorboard", "wandb", ... (Trainer's report_to)
    logging_steps: int = 10
    save_total_limit: int = 2
    keep_checkpoints: bool = False  # False: delete checkpoints/ after the final model is saved
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "last" for the latest in run_dir
    gradient_checkpointing: bool = False
    optim: str = "adamw_torch"
    deepspeed: str | None = None  # DeepSpeed JSON config (run under `accelerate launch` / `deepspeed`)
    fsdp: str = ""  # Trainer's fsdp option, e.g. "full_shard auto_wrap"
    dataloader_num_workers: int = 0
    # T5Config (LlamaConfig for "tiny-llama") fields, and vocab_size, for the tiny students
    tiny_overrides: dict[str, Any] = field(default_factory=dict)
    log_batch_ids: bool = False  # write the example ids of every micro-batch (for checking data order)
    disable_tqdm: bool = True
    # drop rationales (the example stays in the label task): gold-agree, no-truncation, min-length:N, max-length:N
    rationale_filter: list[str] = field(default_factory=list)  # see stepdistill.rationale_filters
    # step-by-step on a --n K self-consistency cache: the rationale task trains on "one" (the chosen rationale),
    # "all" samples that parsed, or those whose label agrees with the vote ("vote-agree") or gold ("gold-agree")
    rationale_samples: str = "one"
    # --- knowledge distillation from a local teacher (issue 24, items 3 and 4; student/online_kd.py, kd.py) ---

    # a checkpoint folder, `stepdistill train` run folder or export of the same family and vocabulary as the student;
    # it runs teacher-forced on the same rows (no gradients) for the token and hidden-state terms
    kd_teacher: str | None = None
    # each task's loss becomes (1 - W) * cross-entropy + W * divergence from the teacher, per target token
    token_kd_weight: float = 0.0
    # "fkl" KL(teacher || student), "rkl" KL(student || teacher), "jsd" generalised JSD (TRL GKD's conventions)
    kd_divergence: str = "fkl"
    jsd_beta: float = 0.5  # jsd: 0 = fkl, 1 = rkl, 0.5 = the symmetric JSD (TRL's beta)
    kd_temperature: float = 1.0  # softmax temperature of both distributions; the divergence is scaled by T^2
    # + W * MSE between student and teacher hidden states at the target tokens (a learned projection where the
    # widths differ; dropped from the saved model/)
    hidden_weight: float = 0.0
    # student:teacher hidden-state pairs, "1:2,2:4" (0 = embeddings, k = output of block k; seq2seq: the decoder's);
    # None = evenly spaced, each student layer to teacher layer round(k * teacher layers / student layers)
    hidden_layers: str | None = None
    # where the token term's teacher distribution comes from: "teacher" (--kd-teacher, online) or "cache" (offline:
    # the cache's top-k log-probabilities per teacher token, generate --token-logprobs K; rationale task only)
    token_kd_source: str = "teacher"
    # --token-kd-source cache: "renorm" the top-k renormalised, or "bucket" k + 1 buckets (the rest as one)
    token_kd_rest: str = "renorm"

    # -- soft labels and schedules (issue 24): stepdistill/student/soft_labels.py, schedules.py -------------------

    # weight of the soft-label term in the label task: (1 - w) * CE(hard) + w * T^2 * KL(teacher_T || student_T),
    # over the candidates, from the caches' label_logprobs; None = 0.5 for method distill, else 0 (off)
    soft_weight: float | None = None
    # softmax temperature T of both distributions; 2.0: with 2-5 candidates and a confident teacher, T = 1 leaves
    # little beyond the hard label, T = 2 shows the ratios of its other candidates (T^2 keeps the gradient scale)
    temperature: float = 2.0
    # alpha over the training steps, in place of --alpha: "linear:START:END", "cosine:START:END" or
    # "constant:VALUE"; the first update uses START, the last END (logged at every logging step)
    alpha_schedule: str | None = None
    soft_weight_schedule: str | None = None  # soft_weight over the steps, in place of --soft-weight (as alpha's)
    temperature_schedule: str | None = None  # temperature over the steps, in place of --temperature (as alpha's)

    @property
    def soft_weight_value(self) -> float:
        """soft_weight with its method default."""
        if self.soft_weight is not None:
            return self.soft_weight
        return DISTILL_SOFT_WEIGHT if self.method == "distill" else 0.0

    @property
    def lora(self) -> bool:
        return bool(self.lora_r)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.missing_rationale not in ("error", "bare"):
            raise ValueError(f"missing_rationale must be 'error' or 'bare', got {self.missing_rationale!r}")
        if self.student_rationales and self.method != "rationale-input":
            raise ValueError(f"student_rationales applies to method rationale-input, not to {self.method!r}")
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.label_prefix == self.rationale_prefix:
            raise ValueError("label_prefix and rationale_prefix must differ")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.per_device_batch_size is not None and self.per_device_batch_size < 1:
            raise ValueError(f"per_device_batch_size must be at least 1, got {self.per_device_batch_size}")
        if self.length_chunks is not None and self.length_chunks < 1:
            raise ValueError(f"length_chunks must be at least 1, got {self.length_chunks}")
        from ..rationale_filters import parse_filters

        parse_filters(self.rationale_filter)  # a bad filter fails here, before any training
        if self.rationale_filter and self.method not in ("standard", "step-by-step"):
            raise ValueError(f"rationale_filter applies to step-by-step training, not to method {self.method!r}")
        if self.rationale_first_eval and self.method != "step-by-step":
            raise ValueError(f"rationale_first_eval needs method step-by-step (a rationale task), not {self.method!r}")
        if self.rationale_samples not in RATIONALE_SAMPLES:
            raise ValueError(f"rationale_samples must be one of {RATIONALE_SAMPLES}, got {self.rationale_samples!r}")
        if self.rationale_samples != "one" and self.method != "step-by-step":
            raise ValueError(f"rationale_samples applies to method step-by-step, not to {self.method!r}")
        if self.rank_normalization not in (None, "sum", "mean"):
            raise ValueError(f"rank_normalization must be 'sum' or 'mean', got {self.rank_normalization!r}")
        if self.lora_r is not None and self.lora_r < 0:
            raise ValueError(f"lora_r must be 0 (off) or positive, got {self.lora_r}")
        self._check_kd()
        from .schedules import check_schedules

        check_schedules(self)  # soft_weight, temperature, the schedules and the methods they apply to
        if self.save_steps is not None and self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps})")

    def _check_offline_kd(self) -> bool:
        """--token-kd-source cache (student/offline_kd.py): True when it is on and consistent."""
        from .offline_kd import RESTS

        if self.token_kd_source not in ("teacher", "cache"):
            raise ValueError("option --token-kd-source: 'teacher' (--kd-teacher) or 'cache', got "
                             f"{self.token_kd_source!r}")
        if self.token_kd_rest not in RESTS:
            raise ValueError(f"option --token-kd-rest: one of {', '.join(RESTS)}, got {self.token_kd_rest!r}")
        if self.token_kd_source != "cache":
            return False
        if self.token_kd_weight <= 0:
            raise ValueError("option --token-kd-source cache: give --token-kd-weight above 0")
        conflicts = [name for name, on in (("--kd-teacher", bool(self.kd_teacher)),
                                           ("--hidden-weight", self.hidden_weight > 0),
                                           ("--shared-encoder", self.shared_encoder), ("--fsdp", bool(self.fsdp)),
                                           ("--deepspeed", bool(self.deepspeed)),
                                           ("--rationale-samples " + self.rationale_samples,
                                            self.rationale_samples != "one"),
                                           (f"--method {self.method}", self.method != "step-by-step")) if on]
        if conflicts:
            raise ValueError(f"option --token-kd-source cache: not supported with {conflicts[0]} (offline token "
                             "distillation is on the step-by-step rationale task, from the cache alone)")
        return True

    def _check_kd(self) -> None:
        """Issue 24's options: shrink specs, knowledge distillation from a local teacher."""
        from .kd import DIVERGENCES, check_layer_map_syntax
        from .shrink import is_shrink, parse_shrink

        if is_shrink(self.model):
            parse_shrink(self.model)
        if not 0.0 <= self.token_kd_weight <= 1.0:
            raise ValueError(f"option --token-kd-weight: must be in [0, 1], got {self.token_kd_weight}")
        if self.hidden_weight < 0:
            raise ValueError(f"option --hidden-weight: must be 0 (off) or positive, got {self.hidden_weight}")
        if self.kd_divergence not in DIVERGENCES:
            raise ValueError(f"option --kd-divergence: one of {', '.join(DIVERGENCES)}, got {self.kd_divergence!r}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ValueError(f"option --jsd-beta: must be in [0, 1], got {self.jsd_beta}")
        if self.kd_temperature <= 0:
            raise ValueError(f"option --kd-temperature: must be positive, got {self.kd_temperature}")
        check_layer_map_syntax(self.hidden_layers)
        if self.hidden_layers and not self.hidden_weight:
            raise ValueError("option --hidden-layers: needs --hidden-weight above 0")
        if self._check_offline_kd():
            return
        weighted = self.token_kd_weight > 0 or self.hidden_weight > 0
        if weighted and not self.kd_teacher:
            raise ValueError("option --token-kd-weight / --hidden-weight: needs a teacher (--kd-teacher PATH)")
        if self.kd_teacher and not weighted:
            raise ValueError("option --kd-teacher: give --token-kd-weight and/or --hidden-weight above 0")
        if self.kd_teacher:
            unsupported = [name for name, on in (("--shared-encoder", self.shared_encoder),
                                                 ("--fsdp", bool(self.fsdp)), ("--deepspeed", bool(self.deepspeed)),
                                                 ("--lora-r (with --hidden-weight)",
                                                  self.lora and self.hidden_weight > 0)) if on]
            if unsupported:
                raise ValueError(f"option --kd-teacher: not supported with {unsupported[0]}")
