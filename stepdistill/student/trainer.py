"""Multi-task student training on the Hugging Face Trainer: ``[label]`` and ``[rationale]`` tasks, one loss
(:mod:`.loss`), for seq2seq and causal-LM students alike (:mod:`.families`).

Methods:
  ``standard``      the label task only: gold labels = standard fine-tuning, teacher labels = standard distillation.
  ``step-by-step``  label task + rationale task (gold or teacher labels).

Where things are: example selection and tokenising in :mod:`.examples`, batching in :mod:`.collate`, the loss in
:mod:`.loss`, the Trainer's arguments in :mod:`.arguments`, LoRA in :mod:`.lora`, run-folder files in
:mod:`.runfiles`, the Trainer subclass in :mod:`.step_trainer`; here :func:`run_training`. Selection: label
accuracy on valid every ``eval_steps``; the best checkpoint on valid is loaded at the end and test is evaluated
once on it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..tasks import Task, get_task
from .arguments import batch_layout, training_arguments, world_size  # noqa: F401  (batch_layout re-exported)
from .collate import (GlobalBatchLengthSampler, MultiTaskCollator, default_length_chunks,  # noqa: F401
                      length_sorted_chunks, length_sorted_micro_batches)
from .config import LABEL_SOURCES, META_FILE, METHODS, TrainConfig  # noqa: F401  (re-exported)
from .examples import evaluation_rationales, select_examples, tokenize_examples, usable_rationale  # noqa: F401
from .runfiles import read_log  # noqa: F401  (re-exported)
from .step_trainer import LogAtCheckpoints, StepByStepTrainer, whole_run_loss  # noqa: F401  (re-exported)


def _load_initial_student(config: TrainConfig, train_records, run_dir: Path, args, extra_texts=()):
    """(model, tokenizer, the base a LoRA run's adapters sit on: ``../student-init`` inside the run folder, an
    absolute local path or a hub / short name)."""
    from .models import TINY_BUILDERS, load_student, student_texts
    from .shrink import is_shrink
    from .warmstart import is_warm_start

    model_source, base = config.model, config.model
    init_dir = run_dir / "student-init"
    inside_run = os.path.join("..", init_dir.name)  # relative to run_dir/model: the run folder can move
    if config.model in TINY_BUILDERS:
        with args.main_process_first(desc="build tiny student"):
            if not (init_dir / "config.json").exists():
                texts = student_texts(train_records, config.label_prefix, config.rationale_prefix) + list(extra_texts)
                load_student(config.model, texts, init_dir, seed=config.seed, tiny_overrides=config.tiny_overrides)
        model_source, base = str(init_dir), inside_run
    elif is_shrink(config.model):  # the cut-down copy is saved once: LoRA bases, resumes and ranks read it
        with args.main_process_first(desc="shrink student"):
            if not (init_dir / "config.json").exists():
                from .quiet import no_progress_bars

                shrunk, shrunk_tokenizer = load_student(config.model)
                with no_progress_bars():
                    shrunk.save_pretrained(init_dir)
                    shrunk_tokenizer.save_pretrained(init_dir)
        model_source, base = str(init_dir), inside_run
    elif Path(config.model).exists():
        base = str(Path(config.model).resolve())
    model, tokenizer = load_student(model_source)
    if config.lora and is_warm_start(config.model):
        # a warm-started pair's cross-attention is freshly initialised (the same seed on every rank): save the
        # exact weights the adapters sit on
        if args.process_index == 0 and not (init_dir / "config.json").exists():
            from .quiet import no_progress_bars

            with no_progress_bars():
                model.save_pretrained(init_dir)
                tokenizer.save_pretrained(init_dir)
        base = inside_run
    return model, tokenizer, base


def run_training(task: str | Task, train_records: list[dict[str, Any]], valid_records: list[dict[str, Any]],
                 test_records: list[dict[str, Any]], config: TrainConfig, run_dir: str | os.PathLike,
                 extra: dict[str, Any] | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Train a student, keep the best checkpoint on valid, evaluate test once; write results, config, predictions.

    Files in ``run_dir``: results.json, config.json, predictions_valid.jsonl, predictions_test.jsonl, model/ (the
    student, or its LoRA adapters, loadable with :func:`stepdistill.student.predict.load_trained_student`),
    train_log.jsonl (Trainer log history) and, while training or with ``keep_checkpoints``, checkpoints/.
    """
    from .quiet import no_progress_bars, silence_checkpoint_order_notice

    silence_checkpoint_order_notice()
    with no_progress_bars():
        return _run_training(task, train_records, valid_records, test_records, config, Path(run_dir), extra,
                             callbacks)


def _run_training(task, train_records, valid_records, test_records, config: TrainConfig, run_dir: Path, extra,
                  callbacks) -> dict[str, Any]:
    from transformers import set_seed

    from .evaluate import accuracy_by_rank_normalization, rank_normalization_for
    from .families import family_of
    from .runfiles import config_record, peak_memory_mb, student_meta, write_json, write_jsonl, write_meta

    task = get_task(task)
    finished = _finished_run(run_dir, config)
    if finished is not None:
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    if not valid_records:
        raise ValueError("the valid split is empty: it is needed to select the checkpoint")
    examples, counts = select_examples(train_records, config, task)
    # rationale-input: checks of valid/test rationales and the student's own, before any training
    bare_inputs, own_rationale_records = evaluation_rationales(config, valid_records, test_records)
    processes = world_size()
    per_device, accumulation = batch_layout(config.batch_size, processes, config.per_device_batch_size)
    checkpoint_dir = run_dir / "checkpoints"
    args = training_arguments(config, checkpoint_dir, per_device, accumulation)
    if args.world_size != processes:
        raise RuntimeError(f"WORLD_SIZE says {processes} processes but the Trainer sees {args.world_size}")

    set_seed(config.seed)
    from .examples import ABLATIONS

    # the ablations' own targets and inputs (answer format, appended rationales) go into a tiny student's tokenizer
    extra_texts = [text for e in examples for text in (e["input"], e["target"])] if config.method in ABLATIONS else ()
    model, tokenizer, base = _load_initial_student(config, train_records, run_dir, args, extra_texts)
    family = family_of(model, decoder_prefixes=(config.label_prefix, config.rationale_prefix)
                       if config.shared_encoder else ())
    lora_info = None
    if config.lora:
        from .lora import apply_lora

        model, lora_info = apply_lora(model, config, family.name)
        lora_info["base_model"] = base
    from .sharding import fsdp_requested

    if fsdp_requested(config):
        from .sharding import prepare_for_fsdp

        prepare_for_fsdp(model, config)  # T5's tied embeddings: FSDP shards a parameter in one group only
    if config.rationale_filter:  # token lengths need the tokenizer; filtered examples stay in the label task
        from ..rationale_filters import filter_rationales

        examples, counts["rationale_filter"] = filter_rationales(
            task, examples, train_records, config.rationale_filter, tokenizer, config.max_target_length)
        counts["rationale_task"] = counts["rationale_filter"]["kept"]
        examples = [e for e in examples if e["target"] is not None or e["rationale"] is not None]  # emptied sample rows
    rank_normalization = rank_normalization_for(task, config.rank_normalization)
    train_dataset = tokenize_examples(examples, tokenizer, config, family)
    if config.per_device_batch_size is None:  # the default: a micro-batch cap from the model and the rows' lengths
        from .arguments import auto_micro_batch, row_tokens

        cap = auto_micro_batch(getattr(model, "config", None),
                               row_tokens(train_dataset, family.labels_follow_inputs), args.device.type)
        derived = batch_layout(config.batch_size, processes, cap) if cap is not None else (per_device, accumulation)
        if derived != (per_device, accumulation):
            per_device, accumulation = derived
            args = training_arguments(config, checkpoint_dir, per_device, accumulation)
    batch_log = None
    if config.log_batch_ids:
        batch_log = run_dir / f"batch_ids.rank{args.process_index}.jsonl"
        batch_log.unlink(missing_ok=True)

    from .offline_kd import build_offline_distiller

    # --token-kd-source cache: the teacher's stored top-k aligned to the rationale targets (vocabulary checked)
    offline_kd = build_offline_distiller(config, examples, train_records, train_dataset, tokenizer, family)
    trainer = StepByStepTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=train_dataset.select(range(1)),
        data_collator=MultiTaskCollator(tokenizer.pad_token_id, family.labels_follow_inputs), processing_class=tokenizer,
        callbacks=[LogAtCheckpoints(), *(callbacks or [])], step_config=config, task=task,
        eval_records=valid_records, family=family,
        rank_normalization=rank_normalization, batch_log=batch_log, offline_kd=offline_kd)
    if callbacks:  # the caller shows progress: drop the Trainer's raw log-dict prints (train_log.jsonl keeps them)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)

    resume = config.resume_from_checkpoint
    if resume == "last":
        resume = True
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    resumed_from = _resumed_step(resume, checkpoint_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_seconds, train_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    # the best checkpoint on valid is loaded now (load_best_model_at_end); test is scored once, here
    valid_accuracy, valid_predictions = trainer.score(valid_records)
    test_accuracy, test_predictions = (trainer.score(test_records, rationales=config.generate_rationales)
                                       if test_records else (None, []))
    own_accuracy, own_predictions = (trainer.score(own_rationale_records) if own_rationale_records
                                     else (None, []))
    first_accuracy, first_predictions = (trainer.score(test_records, rationale_first=True)
                                         if config.rationale_first_eval and test_records else (None, []))
    wall_seconds = time.perf_counter() - start
    trained_steps = trainer.state.global_step
    results = {
        "task": task.name,
        "method": config.method,
        "label_source": config.label_source,
        "model": config.model,
        "family": family.name,
        "shared_encoder": config.shared_encoder,
        "lora_r": config.lora_r or None,
        "rank_normalization": rank_normalization,
        "alpha": config.alpha if config.method == "step-by-step" else 1.0,
        **trainer.soft_label_results(),  # soft_weight, temperature and the schedules (student/soft_labels.py)
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
        **({"rationale_input_bare": bare_inputs} if bare_inputs else {}),  # examples read without a rationale
        # rationale-input scored on test with the student's own rationales (config.student_rationales)
        **({"test_accuracy_student_rationales": own_accuracy} if own_rationale_records else {}),
        # step-by-step scored on test with its own rationale generated first, appended to the label input
        **({"test_accuracy_rationale_first": first_accuracy} if first_predictions else {}),
        "valid_count": len(valid_records),
        "test_accuracy": test_accuracy,
        "test_count": len(test_records),
        # the same scores under the other normalization too: the measurement for choosing a task's default
        "test_accuracy_by_rank_normalization": accuracy_by_rank_normalization(
            task, test_records, test_predictions, tokenizer, rank_normalization) if test_records else None,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),  # all threads of this process: steadier on a busy machine
        "eval_seconds_during_training": round(trainer.eval_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "train_examples_per_second": round(
            (trained_steps - resumed_from) * config.batch_size / train_seconds, 2),
        # the whole run's mean, also when resumed (the Trainer's own figure covers only the steps of this call)
        "train_loss": whole_run_loss(trainer.state.log_history, resumed_from, train_output.training_loss,
                                     trained_steps),
        "resumed_from_step": resumed_from or None,
        **peak_memory_mb(),
        "bf16": config.bf16,
        "device": str(args.device),
        "torch_threads": torch.get_num_threads(),
        "length_chunks": trainer.length_chunks,
    }
    from .online_kd import kd_settings

    results.update(kd_settings(config))  # issue 24: the teacher and the weights of its terms
    if trainer.kd is not None:
        results.update(trainer.kd.timing())
    results.update(extra or {})
    model_dir = run_dir / "model"
    # every rank: FSDP gathers the sharded weights (the Trainer writes from rank 0 only); LoRA: the adapters only,
    # the base stays where lora.base_model says
    trainer.save_model(str(model_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(model_dir))
        write_meta(model_dir, student_meta(task, config, family.name, getattr(family, "separator", None),
                                           lora_info, rank_normalization))
        write_jsonl(run_dir / "predictions_valid.jsonl", valid_predictions)
        if test_records:
            write_jsonl(run_dir / "predictions_test.jsonl", test_predictions)
        if own_rationale_records:
            write_jsonl(run_dir / "predictions_test_student_rationales.jsonl", own_predictions)
        if first_predictions:
            write_jsonl(run_dir / "predictions_test_rationale_first.jsonl", first_predictions)
        write_jsonl(run_dir / "train_log.jsonl", trainer.state.log_history)
        write_json(run_dir / "config.json", config_record(config, processes, per_device, accumulation))
        write_json(run_dir / "results.json", results)
        if not config.keep_checkpoints:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return results


def _finished_run(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The results of a run that already finished in ``run_dir``, when asked to resume it: it is left as it is."""
    results_file = run_dir / "results.json"
    if not config.resume_from_checkpoint or not results_file.is_file():
        return None
    results = json.loads(results_file.read_text())
    if results.get("steps", 0) < config.max_steps:
        return None  # asked for more steps than it ran: train on from its last checkpoint
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{run_dir}: already finished ({results['steps']} of {config.max_steps} steps, "
              f"{results_file.name}); nothing to resume", flush=True)
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


def steps_for_epochs(examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps for ``epochs`` passes over ``examples`` at a global ``batch_size``."""
    return max(1, math.ceil(examples * epochs / batch_size))
