"""Multi-task student training on the Hugging Face Trainer: ``[label]`` and ``[rationale]`` tasks, one loss.

    loss = alpha * label_loss + (1 - alpha) * rationale_loss

Each task's loss is the mean over its own target tokens in the whole global batch (all gradient-accumulation
micro-batches on all processes), so long rationales cannot swamp the label loss and the loss, hence the update, is
the same whatever the number of devices.

Methods:
  ``standard``      the label task only: gold labels = standard fine-tuning, teacher labels = standard distillation.
  ``step-by-step``  label task + rationale task (gold or teacher labels).

Which examples go where (counted in results.json under ``examples``):
  - label task: every example with a label from the chosen source (gold: all; teacher: those whose teacher output
    gave a valid label, the rest are dropped and counted as ``dropped_no_teacher_label``);
  - rationale task: only examples whose teacher output parsed completely (``teacher_error`` is None). Examples
    without a usable rationale stay in the label task and leave the rationale task (``no_rationale`` by reason).

Selection: label accuracy on valid every ``eval_steps``; the best checkpoint on valid is loaded at the end and test
is evaluated once on it.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..tasks import Task, get_task
from .config import LABEL_SOURCES, META_FILE, METHODS, TrainConfig  # noqa: F401  (re-exported)

def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_layout(global_batch: int, processes: int, per_device_cap: int | None = None) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) whose product times ``processes`` is ``global_batch``."""
    if global_batch % processes:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {processes} processes")
    per_process = global_batch // processes
    per_device = min(per_process, per_device_cap or per_process)
    while per_process % per_device:
        per_device -= 1
    return per_device, per_process // per_device


# -- examples --------------------------------------------------------------------------------------------------

def usable_rationale(record: dict[str, Any]) -> bool:
    return record.get("teacher_error") is None and bool((record.get("rationale") or "").strip())


def select_examples(records: list[dict[str, Any]], config: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Training examples as (record, target label, rationale or None), plus counts of what went where and why."""
    chosen, dropped, no_rationale = [], Counter(), Counter()
    for record in records:
        label = record["label"] if config.label_source == "gold" else record.get("teacher_label")
        if label is None:
            dropped[record.get("teacher_error") or "missing"] += 1
            continue
        rationale = None
        if config.method == "step-by-step":
            if usable_rationale(record):
                rationale = record["rationale"].strip()
            else:
                no_rationale[record.get("teacher_error") or "empty_rationale"] += 1
        chosen.append({"id": record["id"], "input": record["input"], "target": label, "rationale": rationale})
    if not chosen:
        raise ValueError(f"no training example has a {config.label_source} label")
    counts = {
        "given": len(records),
        "label_task": len(chosen),
        "rationale_task": sum(example["rationale"] is not None for example in chosen),
        "dropped_no_teacher_label": dict(dropped),
        "no_rationale": dict(no_rationale),
    }
    return chosen, counts


def tokenize_examples(examples: list[dict[str, Any]], tokenizer, config: TrainConfig):
    """A `datasets.Dataset` of token ids for both tasks (rationale columns empty when an example has none)."""
    from datasets import Dataset

    from .models import encode_targets  # no [CLS] in targets, end token last: the same for T5 and BERT students

    def ids(texts: list[str], limit: int) -> list[list[int]]:
        return tokenizer(texts, truncation=True, max_length=limit)["input_ids"] if texts else []

    with_rationale = [i for i, example in enumerate(examples) if example["rationale"] is not None]
    rationale_inputs = ids([config.rationale_prefix + examples[i]["input"] for i in with_rationale],
                           config.max_input_length)
    rationale_targets = encode_targets(tokenizer, [examples[i]["rationale"] for i in with_rationale],
                                       config.max_target_length)
    rationale_input_ids: list[list[int]] = [[] for _ in examples]
    rationale_labels: list[list[int]] = [[] for _ in examples]
    for i, inp, tgt in zip(with_rationale, rationale_inputs, rationale_targets):
        rationale_input_ids[i], rationale_labels[i] = inp, tgt
    input_ids = ids([config.label_prefix + example["input"] for example in examples], config.max_input_length)
    labels = encode_targets(tokenizer, [example["target"] for example in examples], config.max_target_length)
    return Dataset.from_dict({
        "example_index": list(range(len(examples))),
        "input_ids": input_ids,
        "labels": labels,
        "rationale_input_ids": rationale_input_ids,
        "rationale_labels": rationale_labels,
        # work per example, for length grouping: both encoder inputs and both targets
        "length": [len(a) + len(b) + len(c) + len(d) for a, b, c, d in
                   zip(input_ids, labels, rationale_input_ids, rationale_labels)],
    })


class MultiTaskCollator:
    """Pads the label task and, separately, the rationale task of the examples that have one (their targets are
    much longer than labels, so one shared padded batch would waste decoder work on label rows)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def _pad(self, rows: list[list[int]], value: int):
        import torch

        out = torch.full((len(rows), max([len(r) for r in rows], default=1) or 1), value, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        with_rationale = [f for f in features if f["rationale_labels"]]
        input_ids = self._pad([f["input_ids"] for f in features], self.pad_token_id)
        rationale_input_ids = self._pad([f["rationale_input_ids"] for f in with_rationale], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": input_ids.ne(self.pad_token_id).long(),
            "labels": self._pad([f["labels"] for f in features], -100),
            "rationale_input_ids": rationale_input_ids,
            "rationale_attention_mask": rationale_input_ids.ne(self.pad_token_id).long(),
            "rationale_labels": self._pad([f["rationale_labels"] for f in with_rationale], -100),
            "example_index": torch.tensor([f["example_index"] for f in features], dtype=torch.long),
        }


class GlobalBatchLengthSampler:
    """Random order in which each GLOBAL batch holds examples of similar length.

    Hand-written because transformers' LengthGroupedSampler groups per process, so its batches (and results)
    change with the device count; here the order depends only on (seed, epoch, global batch size)."""

    def __init__(self, lengths: list[int], global_batch: int, seed: int, group_batches: int = 16):
        self.lengths, self.global_batch, self.seed, self.group_batches = lengths, global_batch, seed, group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        group = self.global_batch * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            sorted_group = sorted(order[start:start + group], key=lambda i: -self.lengths[i])
            batches += [sorted_group[b:b + self.global_batch] for b in range(0, len(sorted_group), self.global_batch)]
        # a short final batch stays last so every other global batch is complete
        full, tail = [b for b in batches if len(b) == self.global_batch], [b for b in batches if len(b) < self.global_batch]
        rng.shuffle(full)
        for batch in full + tail:
            yield from batch


def default_length_chunks(device_type: str) -> int:
    """At most 4 chunks on a CPU with one torch thread (e-SNLI, tiny T5, batch 32: 1.3x faster steps). Otherwise 1:
    with two threads the smaller matrices lost what the padding saved (measured 0.95x); GPUs are unmeasured."""
    import torch

    return 4 if device_type == "cpu" and torch.get_num_threads() == 1 else 1


def length_sorted_chunks(input_lengths: list[int], target_lengths: list[int], max_chunks: int,
                         min_saving: float = 0.2) -> list[list[int]]:
    """Row groups of a batch: rows sorted by input length (longest first), the chunk whose halving saves most is
    halved while that cuts its padded area (rows x (longest input + longest target)) by ``min_saving`` or more, up
    to ``max_chunks`` groups. Batches of similar lengths stay whole: there, small chunks cost more than they save
    (the arithmetic demo: 1.3x slower steps in 4 fixed chunks)."""
    order = sorted(range(len(input_lengths)), key=lambda i: (-input_lengths[i], i))

    def area(rows: list[int]) -> int:
        return len(rows) * (max(input_lengths[r] for r in rows) + max(target_lengths[r] for r in rows))

    chunks = [order]
    while len(chunks) < max_chunks:
        best = None
        for index, rows in enumerate(chunks):
            if len(rows) < 2:
                continue
            half = len(rows) // 2
            saving = 1 - (area(rows[:half]) + area(rows[half:])) / area(rows)
            if saving >= min_saving and (best is None or saving > best[0]):
                best = (saving, index, rows[:half], rows[half:])
        if best is None:
            break
        _, index, first, second = best
        chunks[index:index + 1] = [first, second]
    return chunks


def token_loss_sum(model, input_ids, attention_mask, labels, chunks: int = 1, unwrapped=None):
    """(sum of the target tokens' cross-entropies, number of target tokens) of a right-padded batch.

    The rows run in at most ``chunks`` length-sorted chunks (:func:`length_sorted_chunks`), each cut to its own
    longest input and target: the sum is that of one padded batch (same examples, same update) without computing
    most of the padding (e-SNLI batches of 32: inputs padded as one batch are 1.8x the real tokens, 1.2x in 4
    chunks). ``unwrapped``: the model without its DDP/FSDP wrapper, for ``prepare_decoder_input_ids_from_labels``."""
    import torch

    unwrapped = unwrapped or model
    input_lengths = attention_mask.sum(1)
    target_lengths = labels.ne(-100).sum(1)
    total = None
    groups = length_sorted_chunks(input_lengths.tolist(), target_lengths.tolist(), chunks) if chunks > 1 else []
    for rows in groups if len(groups) > 1 else [None]:  # one group: the batch as it is, rows in their own order
        rows = slice(None) if rows is None else torch.tensor(rows, device=input_ids.device)
        width, target_width = int(input_lengths[rows].max()), max(1, int(target_lengths[rows].max()))
        chunk_labels = labels[rows, :target_width]
        logits = model(input_ids=input_ids[rows, :width], attention_mask=attention_mask[rows, :width],
                       decoder_input_ids=unwrapped.prepare_decoder_input_ids_from_labels(labels=chunk_labels)).logits
        chunk_sum = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)),
                                                      chunk_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total = chunk_sum if total is None else total + chunk_sum
    return total, target_lengths.sum()


def _trainer_class():
    import torch
    from transformers import Trainer

    class StepByStepTrainer(Trainer):
        """Trainer with the two-task loss, per-task token normalisation and rank-scored validation accuracy."""

        loss_is_scaled_for_ga = True  # compute_loss divides by the global token counts itself

        def __init__(self, *args, step_config: TrainConfig, task: Task, eval_records: list[dict[str, Any]],
                     batch_log: Path | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.step_config = step_config
            self.task = task
            self.eval_records = eval_records
            self.batch_log = batch_log
            self._task_losses: dict[str, list[float]] = {"label_loss": [], "rationale_loss": []}
            self.length_chunks = step_config.length_chunks or default_length_chunks(self.args.device.type)
            self.eval_seconds = 0.0

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if not self.step_config.group_by_length:
                return super()._get_train_sampler(train_dataset)
            return GlobalBatchLengthSampler(dataset["length"], self.step_config.batch_size, self.args.seed)

        def _get_num_items_in_batch(self, batch_samples, device):
            # target tokens per task over the whole global batch: [label tokens, rationale tokens]
            counts = torch.stack([torch.stack([b["labels"].ne(-100).sum(), b["rationale_labels"].ne(-100).sum()])
                                  for b in batch_samples]).sum(0).to(device)
            if self.args.world_size > 1:
                counts = self.accelerator.gather(counts).view(-1, 2).sum(0)
            return counts

        def _task_loss(self, model, input_ids, attention_mask, labels):
            return token_loss_sum(model, input_ids, attention_mask, labels, self.length_chunks,
                                  self.accelerator.unwrap_model(model))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.batch_log is not None and model.training:
                with self.batch_log.open("a") as f:
                    f.write(json.dumps({"step": self.state.global_step,
                                        "example_index": inputs["example_index"].tolist()}) + "\n")
            label_sum, label_tokens = self._task_loss(model, inputs["input_ids"], inputs["attention_mask"],
                                                      inputs["labels"])
            two_tasks = self.step_config.method == "step-by-step"
            rationale_sum = label_sum.new_zeros(())
            rationale_tokens = label_tokens.new_zeros(())
            if two_tasks and inputs["rationale_labels"].ne(-100).any():
                rationale_sum, rationale_tokens = self._task_loss(
                    model, inputs["rationale_input_ids"], inputs["rationale_attention_mask"], inputs["rationale_labels"])
            global_counts = num_items_in_batch is not None and torch.is_tensor(num_items_in_batch) \
                and num_items_in_batch.numel() == 2
            if global_counts:  # training: normalise by the global batch's token counts
                n_label, n_rationale = num_items_in_batch.clamp(min=1).to(label_sum.dtype)
                scale = self.args.world_size  # DDP averages gradients over processes; undo that for a global mean
            else:  # evaluation loss on one batch
                n_label, n_rationale = label_tokens.clamp(min=1), rationale_tokens.clamp(min=1)
                scale = 1
            label_loss, rationale_loss = label_sum / n_label, rationale_sum / n_rationale
            if two_tasks:
                loss = self.step_config.alpha * label_loss + (1 - self.step_config.alpha) * rationale_loss
            else:
                loss = label_loss
            if model.training:  # per-micro-batch task means, for logging
                self._task_losses["label_loss"].append((label_sum / label_tokens.clamp(min=1)).item())
                if rationale_tokens > 0:
                    self._task_losses["rationale_loss"].append((rationale_sum / rationale_tokens).item())
            loss = loss * scale
            return (loss, {"label_loss": label_loss, "rationale_loss": rationale_loss}) if return_outputs else loss

        def log(self, logs, start_time=None):
            if "loss" in logs:
                for name, values in self._task_losses.items():
                    if values:
                        logs[name] = round(sum(values) / len(values), 6)
                    values.clear()
            super().log(logs, start_time)

        def score(self, records: list[dict[str, Any]], rationales: bool = False) -> tuple[float, list[dict[str, Any]]]:
            """Label accuracy and predictions on ``records`` (sharded over processes, gathered in order)."""
            from accelerate.utils import gather_object

            from .evaluate import evaluate_records

            rank, processes = self.args.process_index, self.args.world_size
            shard = records[rank::processes]
            model = self.accelerator.unwrap_model(self.model)
            _, predictions = evaluate_records(
                model, self.processing_class, self.task, shard, label_prefix=self.step_config.label_prefix,
                rationale_prefix=self.step_config.rationale_prefix, batch_size=self.step_config.eval_batch_size,
                max_input_length=self.step_config.max_input_length,
                max_target_length=self.step_config.max_target_length,
                label_max_new_tokens=self.step_config.label_max_new_tokens, rationales=rationales,
                bf16=self.step_config.bf16) if shard else (0.0, [])
            if processes > 1:
                gathered = gather_object([(rank + processes * i, row) for i, row in enumerate(predictions)])
                predictions = [row for _, row in sorted(gathered, key=lambda item: item[0])]
            return sum(row["correct"] for row in predictions) / len(predictions), predictions

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            start = time.perf_counter()
            accuracy, _ = self.score(self.eval_records)
            seconds = time.perf_counter() - start
            self.eval_seconds += seconds
            metrics = {f"{metric_key_prefix}_accuracy": accuracy, f"{metric_key_prefix}_runtime": round(seconds, 3)}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return StepByStepTrainer


def _peak_memory_mb() -> dict[str, float]:
    import torch

    peak = {"cpu_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        peak["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)  # never leave a half-written file


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    import jsonlines

    tmp = path.with_suffix(path.suffix + ".tmp")
    with jsonlines.open(tmp, "w") as writer:
        writer.write_all(rows)
    tmp.replace(path)


def run_training(task: str | Task, train_records: list[dict[str, Any]], valid_records: list[dict[str, Any]],
                 test_records: list[dict[str, Any]], config: TrainConfig, run_dir: str | os.PathLike,
                 extra: dict[str, Any] | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Train a student, keep the best checkpoint on valid, evaluate test once; write results, config, predictions.

    Files in ``run_dir``: results.json, config.json, predictions_valid.jsonl, predictions_test.jsonl, model/ (the
    student, loadable with :func:`stepdistill.student.predict.load_trained_student`), train_log.jsonl (Trainer log
    history) and, while training or with ``keep_checkpoints``, checkpoints/.
    """
    import torch
    from transformers import TrainingArguments, set_seed

    from .models import TINY_NAME, load_student, student_texts

    task = get_task(task)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not valid_records:
        raise ValueError("the valid split is empty: it is needed to select the checkpoint")
    examples, counts = select_examples(train_records, config)
    processes = world_size()
    per_device, accumulation = batch_layout(config.batch_size, processes, config.per_device_batch_size)
    checkpoint_dir = run_dir / "checkpoints"
    # transformers renamed gradient_checkpointing to activation_checkpointing within 5.x; we support all of 5.x
    checkpointing_arg = "activation_checkpointing"
    if checkpointing_arg not in TrainingArguments.__dataclass_fields__:
        checkpointing_arg = "gradient_checkpointing"
    args = TrainingArguments(
        output_dir=str(checkpoint_dir),
        max_steps=config.max_steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=config.eval_batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps or config.eval_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_steps=config.logging_steps,
        report_to=config.report_to,
        seed=config.seed,
        bf16=config.bf16,
        fp16=config.fp16,
        **{checkpointing_arg: config.gradient_checkpointing},
        dataloader_pin_memory=torch.cuda.is_available(),
        # CPU-only machines: needed for multi-process CPU (gloo) training and for bf16 autocast on CPU
        use_cpu=not torch.cuda.is_available() and not torch.backends.mps.is_available(),
        deepspeed=config.deepspeed,
        fsdp=config.fsdp,
        remove_unused_columns=False,  # our collator reads the rationale columns the model signature lacks
        dataloader_num_workers=config.dataloader_num_workers,
        disable_tqdm=config.disable_tqdm,
        average_tokens_across_devices=True,
    )
    if args.world_size != processes:
        raise RuntimeError(f"WORLD_SIZE says {processes} processes but the Trainer sees {args.world_size}")

    set_seed(config.seed)
    model_source = config.model
    if config.model == TINY_NAME:
        init_dir = run_dir / "student-init"
        with args.main_process_first(desc="build tiny student"):
            if not (init_dir / "config.json").exists():
                load_student(TINY_NAME, student_texts(train_records, config.label_prefix, config.rationale_prefix),
                             init_dir, seed=config.seed, tiny_overrides=config.tiny_overrides)
        model_source = str(init_dir)
    model, tokenizer = load_student(model_source)
    if config.rationale_filter:  # token lengths need the tokenizer; filtered examples stay in the label task
        from ..rationale_filters import filter_rationales

        examples, counts["rationale_filter"] = filter_rationales(
            task, examples, train_records, config.rationale_filter, tokenizer, config.max_target_length)
        counts["rationale_task"] = counts["rationale_filter"]["kept"]
    train_dataset = tokenize_examples(examples, tokenizer, config)
    batch_log = None
    if config.log_batch_ids:
        batch_log = run_dir / f"batch_ids.rank{args.process_index}.jsonl"
        batch_log.unlink(missing_ok=True)

    trainer = _trainer_class()(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=train_dataset.select(range(1)),
        data_collator=MultiTaskCollator(tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=callbacks, step_config=config, task=task, eval_records=valid_records, batch_log=batch_log)

    resume = config.resume_from_checkpoint
    if resume == "last":
        resume = True
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    resumed_from = _resumed_step(resume, checkpoint_dir)
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - start

    # the best checkpoint on valid is loaded now (load_best_model_at_end); test is scored once, here
    valid_accuracy, valid_predictions = trainer.score(valid_records)
    test_accuracy, test_predictions = (trainer.score(test_records, rationales=config.generate_rationales)
                                       if test_records else (None, []))
    wall_seconds = time.perf_counter() - start
    trained_steps = trainer.state.global_step
    results = {
        "task": task.name,
        "method": config.method,
        "label_source": config.label_source,
        "model": config.model,
        "alpha": config.alpha if config.method == "step-by-step" else 1.0,
        "seed": config.seed,
        "fraction": None,
        "data_seed": None,
        "count": len(train_records),
        "examples": counts,
        "steps": trained_steps,
        "batch_size": config.batch_size,
        "processes": processes,
        "per_device_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "best_step": _best_step(trainer.state.best_model_checkpoint),
        "best_valid_accuracy_during_training": trainer.state.best_metric,
        # [step, accuracy] of every evaluation: did valid accuracy stop improving before training did?
        "valid_curve": [[row["step"], row["eval_accuracy"]] for row in trainer.state.log_history
                        if "eval_accuracy" in row],
        "valid_accuracy": valid_accuracy,
        "valid_count": len(valid_records),
        "test_accuracy": test_accuracy,
        "test_count": len(test_records),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds_during_training": round(trainer.eval_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "train_examples_per_second": round(
            (trained_steps - resumed_from) * config.batch_size / train_seconds, 2),
        "train_loss": train_output.training_loss,
        **_peak_memory_mb(),
        "bf16": config.bf16,
        "device": str(args.device),
        "torch_threads": torch.get_num_threads(),
        "length_chunks": trainer.length_chunks,
    }
    results.update(extra or {})
    if trainer.is_world_process_zero():
        trainer.save_model(str(run_dir / "model"))
        tokenizer.save_pretrained(str(run_dir / "model"))
        _write_json(run_dir / "model" / META_FILE, {
            "task": task.name, "label_prefix": config.label_prefix, "rationale_prefix": config.rationale_prefix,
            "max_input_length": config.max_input_length, "max_target_length": config.max_target_length,
            "label_max_new_tokens": config.label_max_new_tokens,
            "method": config.method})
        _write_jsonl(run_dir / "predictions_valid.jsonl", valid_predictions)
        if test_records:
            _write_jsonl(run_dir / "predictions_test.jsonl", test_predictions)
        _write_jsonl(run_dir / "train_log.jsonl", trainer.state.log_history)
        _write_json(run_dir / "config.json", {**asdict(config), "world_size": processes,
                                              "per_device_batch_size": per_device,
                                              "gradient_accumulation_steps": accumulation})
        _write_json(run_dir / "results.json", results)
        if not config.keep_checkpoints:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return results


def _best_step(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    tail = Path(checkpoint).name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else None


def _resumed_step(resume: str | bool | None, checkpoint_dir: Path) -> int:
    """The step a resumed run started from (0 for a fresh run), so examples/s counts only work done here."""
    if not resume:
        return 0
    if resume is True:
        steps = [_best_step(str(p)) for p in checkpoint_dir.glob("checkpoint-*")]
        return max([s for s in steps if s is not None], default=0)
    return _best_step(str(resume)) or 0


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The Trainer log history of a finished run (losses per logging step, eval accuracies)."""
    import jsonlines

    with jsonlines.open(Path(run_dir) / "train_log.jsonl") as reader:
        return list(reader)


def steps_for_epochs(examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps for ``epochs`` passes over ``examples`` at a global ``batch_size``."""
    return max(1, math.ceil(examples * epochs / batch_size))
