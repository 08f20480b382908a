"""`stepdistill train` and `stepdistill predict`."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train(task: str, output_dir: str, data_dir: str | None = None, source: str = "local", method: str = "step-by-step",
          label_source: str = "gold", fraction: float | None = None, count: int | None = None, data_seed: int = 0,
          stratify: bool = False, model: str = "tiny", alpha: float = 0.5, max_steps: int = 10_000,
          batch_size: int = 64, per_device_batch_size: int | None = None, learning_rate: float = 5e-5,
          eval_steps: int = 250, seed: int = 0, bf16: bool = False, fp16: bool = False,
          max_input_length: int = 1024, max_target_length: int = 256, label_prefix: str = "[label] ",
          rationale_prefix: str = "[rationale] ", generate_rationales: bool = False, report_to: str = "none",
          resume_from_checkpoint: str | None = None, keep_checkpoints: bool = False,
          deepspeed: str | None = None, fsdp: str = "", length_chunks: int | None = None) -> dict:
    """Train a student on a task's train split (optionally subsampled), select on valid, score test once.

    Launch with `accelerate launch -m stepdistill.cli train ...` or `torchrun` for several devices: the
    global batch stays `batch_size`.

    Args:
        task: Task name (esnli, anli1, cqa, svamp, arith-demo), spec.json or file.py:Class.
        output_dir: Run folder: results.json, config.json, predictions_*.jsonl, model/.
        data_dir: Data folder (default: $STEPDISTILL_DATA_DIR or ../shared/data).
        source: Data source: local, official, hub or user.
        method: standard (label task only) or step-by-step (label + rationale tasks).
        label_source: gold (human labels) or teacher (the teacher's labels).
        fraction: Train on this fraction of the full train split (nested across fractions).
        count: Or on this many training examples.
        data_seed: Seed of the training subset (separate from the training seed).
        stratify: Keep label proportions in the subset.
        model: Student: tiny (built offline), minilm2minilm (extra `pretrained`), encoder_path+decoder_path
            (warm-started BERT-like pair), a hub name or a local checkpoint folder.
        alpha: Label-loss weight; the rationale loss gets 1 - alpha.
        max_steps: Optimizer steps.
        batch_size: Global batch size (the same on any number of devices).
        per_device_batch_size: Micro-batch cap per device (gradient accumulation makes up the rest).
        learning_rate: AdamW learning rate.
        eval_steps: Validation accuracy (and a checkpoint) every this many steps.
        seed: Training seed.
        bf16: bf16 mixed precision.
        fp16: fp16 mixed precision (GPU).
        max_input_length: Input tokens kept.
        max_target_length: Target (rationale) tokens kept.
        label_prefix: Prefix of label-task inputs.
        rationale_prefix: Prefix of rationale-task inputs.
        generate_rationales: Also generate rationales for the test predictions.
        report_to: Trainer loggers: none, tensorboard, wandb, ...
        resume_from_checkpoint: A checkpoint folder, or "last" for the latest in output_dir/checkpoints.
        keep_checkpoints: Keep output_dir/checkpoints after training.
        deepspeed: DeepSpeed JSON config.
        fsdp: Trainer fsdp option, e.g. "full_shard auto_wrap".
        length_chunks: Run each micro-batch in this many length-sorted chunks, each padded to its own longest row:
            the same update, less padding computed (default: 4 on a CPU with one torch thread, else 1).
    """
    from ..data import load_task_data, subsample
    from .trainer import TrainConfig, run_training

    if task == "arith-demo":
        from .. import demo  # noqa: F401  (registers the demo task)
    data = load_task_data(task, data_dir=data_dir, source=source)
    for split in ("train", "valid"):
        if split not in data.splits:
            raise SystemExit(f"task {task}: no '{split}' split in {data_dir or 'the default data folder'}")
    train_records = data.splits["train"]
    if fraction is not None or count is not None:
        train_records = subsample(train_records, fraction=fraction, count=count, seed=data_seed,
                                  full_size=data.task.full_split_sizes.get("train") if fraction else None,
                                  stratify=stratify)
    config = TrainConfig(
        model=model, method=method, label_source=label_source, alpha=alpha, label_prefix=label_prefix,
        rationale_prefix=rationale_prefix, max_steps=max_steps, batch_size=batch_size,
        per_device_batch_size=per_device_batch_size, learning_rate=learning_rate, eval_steps=eval_steps, seed=seed,
        bf16=bf16, fp16=fp16, max_input_length=max_input_length, max_target_length=max_target_length,
        generate_rationales=generate_rationales, report_to=report_to, resume_from_checkpoint=resume_from_checkpoint,
        keep_checkpoints=keep_checkpoints, deepspeed=deepspeed, fsdp=fsdp, length_chunks=length_chunks)
    results = run_training(data.task, train_records, data.splits["valid"], data.splits.get("test", []), config,
                           output_dir, extra={"fraction": fraction, "data_seed": data_seed})
    import torch.distributed as dist

    if dist.is_initialized():  # leave the process group cleanly (a rank exiting mid-teardown aborts its peers)
        dist.barrier()
        dist.destroy_process_group()
    if results.get("processes", 1) == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps({k: results[k] for k in ("task", "method", "label_source", "count", "steps",
                                                  "valid_accuracy", "test_accuracy", "wall_seconds")}, indent=2))
    return results


def predict(model_dir: str, input: str | None = None, input_file: str | None = None, output_file: str | None = None,
            rationales: bool = False, task: str | None = None, batch_size: int = 64) -> None:
    """Predict labels (and rationales) with a trained student.

    Args:
        model_dir: A run folder from `stepdistill train` (or its model/ subfolder).
        input: One input: formatted text, or a JSON object with the task's fields.
        input_file: JSON Lines of inputs (objects with the task's fields, or {"input": text}); "-" reads stdin.
        output_file: Write predictions as JSON Lines here (default: print them).
        rationales: Also generate a rationale for each input.
        task: Override the task saved with the model.
        batch_size: Inputs per batch.
    """
    import jsonlines

    from .predict import load_trained_student, predict as run_predict

    if (input is None) == (input_file is None):
        raise SystemExit("give exactly one of --input or --input_file")
    items: list = []
    if input is not None:
        text = input.strip()
        items.append(json.loads(text) if text.startswith("{") else input)
    else:
        handle = sys.stdin if input_file == "-" else open(input_file, encoding="utf-8")
        with handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"{input_file}: line {lineno}: malformed JSON: {exc.msg}") from None
                items.append(obj["input"] if isinstance(obj, dict) and set(obj) == {"input"} else obj)
    student = load_trained_student(model_dir, task)
    rows = run_predict(student, items, rationales=rationales, batch_size=batch_size)
    if output_file:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        with jsonlines.open(output_file, "w") as writer:
            writer.write_all(rows)
        print(f"wrote {len(rows)} predictions to {output_file}")
    else:
        for row in rows:
            print(json.dumps(row))
