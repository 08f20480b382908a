"""The Trainer subclass of every student run: the two-task loss with per-task token normalisation over the global
batch (:mod:`.loss`), micro-batch ordering, and rank-scored validation accuracy. The recipe that builds and runs it
is :func:`.trainer.run_training`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..tasks import Task
from .collate import GlobalBatchLengthSampler, default_length_chunks, length_sorted_micro_batches
from .config import TrainConfig
from .loss import shared_encoder_loss_sums, step_by_step_loss, task_mix, token_loss_sum
from .schedules import schedules_of, soft_labels_on, values_at
from .sharding import rationale_inputs


class LogAtCheckpoints(TrainerCallback):
    """Close the loss-logging window at every checkpoint, so the windows logged up to a checkpoint cover exactly its
    steps and a resumed run can report the training loss of the whole run (:func:`whole_run_loss`)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True
        return control


def whole_run_loss(log_history: list[dict[str, Any]], resumed_from: int, this_call_loss: float,
                   total_steps: int) -> float:
    """The mean training loss over all ``total_steps`` of a run resumed at ``resumed_from``: the logged windows up
    to the resumed step (each window's mean loss times its steps) plus this call's mean over the steps it ran."""
    earlier, previous = 0.0, 0
    for row in log_history:
        if "loss" in row and row["step"] <= resumed_from:
            earlier += row["loss"] * (row["step"] - previous)
            previous = row["step"]
    return (earlier + this_call_loss * (total_steps - resumed_from)) / max(total_steps, 1)


class StepByStepTrainer(Trainer):
    """Trainer with the two-task loss, per-task token normalisation and rank-scored validation accuracy."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the global token counts itself

    def __init__(self, *args, step_config: TrainConfig, task: Task, eval_records: list[dict[str, Any]], family,
                 rank_normalization: str = "sum", batch_log: Path | None = None, offline_kd=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_config = step_config
        self.task = task
        self.family = family
        self.rank_normalization = rank_normalization
        self.eval_records = eval_records
        self.batch_log = batch_log
        self._task_losses: dict[str, list[float]] = {"label_loss": [], "rationale_loss": []}
        self.length_chunks = step_config.length_chunks or default_length_chunks(self.args.device.type)
        self.eval_seconds = 0.0
        self._row_lengths: list[int] | None = None  # the train rows' lengths, for sort_micro_batches
        from .online_kd import build_online_distiller

        # issue 24: the local teacher's token and hidden-state terms (None without --kd-teacher)
        # or the cache's top-k per teacher token on the rationale task (offline_kd.py, built by the caller)
        self.kd = offline_kd or build_online_distiller(step_config, self.model, self.processing_class, family,
                                                       self.args.device)
        if self.kd is not None:
            self._task_losses.update({name: [] for name in self.kd.log_names})
        # soft labels and schedules (student/soft_labels.py, schedules.py)
        self.schedules = schedules_of(step_config)
        self.soft_labels = soft_labels_on(step_config)
        if self.soft_labels:
            self._task_losses["soft_loss"] = []

    def scheduled_values(self, global_step: int | None = None) -> dict[str, float]:
        """alpha, soft_weight and temperature of the update that runs at ``global_step`` (default: now)."""
        step = self.state.global_step if global_step is None else global_step
        return values_at(self.schedules, step, self.step_config.max_steps)

    def soft_label_results(self) -> dict[str, Any]:
        """results.json fields of the soft-label settings and schedules."""
        config = self.step_config
        # a scheduled value is its schedule (in "schedules"), not one number
        soft_weight = config.soft_weight_value if self.soft_labels else 0.0
        return {**({"alpha": None} if config.alpha_schedule else {}),
                "soft_weight": None if config.soft_weight_schedule else soft_weight,
                "temperature": config.temperature if self.soft_labels and not config.temperature_schedule else None,
                "schedules": {name: getattr(config, f"{name}_schedule") for name in self.schedules
                              if getattr(config, f"{name}_schedule") is not None} or None}

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        from .sharding import use_fsdp_on_cpu

        use_fsdp_on_cpu(self)  # accelerate would run --fsdp as DDP on CPUs

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.step_config.group_by_length:
            return super()._get_train_sampler(train_dataset)
        return GlobalBatchLengthSampler(dataset["length"], self.step_config.batch_size, self.args.seed)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.step_config.sort_micro_batches and len(batches) > 1:
            if self._row_lengths is None:
                self._row_lengths = list(self.train_dataset["length"])
            # re-collated from the dataset rows: un-padding the collated tensors would need each family's layout
            batches = length_sorted_micro_batches(batches, self._row_lengths, self.train_dataset.__getitem__,
                                                  self.data_collator)
        return batches, num_items_in_batch

    def _get_num_items_in_batch(self, batch_samples, device):
        # target tokens per task over the whole global batch: [label tokens, rationale tokens] (+ soft-label
        # examples, with soft labels)
        counts = torch.stack([torch.stack([b["labels"].ne(-100).sum(), b["rationale_labels"].ne(-100).sum()]
                                          + ([b["soft_rows"].new_tensor(b["soft_rows"].numel())]
                                             if self.soft_labels else []))
                              for b in batch_samples]).sum(0).to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts).view(-1, len(counts)).sum(0)
        return counts

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        # reloading the best checkpoint: weights tied to loaded ones (T5's embeddings, lm_head) are not missing
        from .quiet import really_missing

        missing = really_missing(self.model, list(load_result.missing_keys))
        super()._issue_warnings_after_load(SimpleNamespace(missing_keys=missing,
                                                           unexpected_keys=load_result.unexpected_keys))

    def _task_loss(self, model, input_ids, attention_mask, labels, task: str = "label"):
        offline = getattr(self.kd, "offline", False)  # offline: the rationale task only; it needs each chunk's rows
        if self.kd is not None and not (offline and task == "label"):
            # the same passes, also summing the distillation terms (for compose, below)
            ce, count, kd, mse = token_loss_sum(self.family, model, input_ids, attention_mask, labels,
                                                self.length_chunks, self.accelerator.unwrap_model(model),
                                                pass_sums=self.kd.chunk_sums, pass_rows=offline)
            self.kd.record(task, kd, mse, count)
            return ce, count
        return token_loss_sum(self.family, model, input_ids, attention_mask, labels, self.length_chunks,
                              self.accelerator.unwrap_model(model))

    def save_model(self, output_dir=None, _internal_call=False):
        if self.kd is None or _internal_call:  # checkpoints keep the hidden-state projections (resume)
            return super().save_model(output_dir, _internal_call)
        with self.kd.without_projections(self.model):  # the final model/: a plain checkpoint
            return super().save_model(output_dir, _internal_call)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.batch_log is not None and model.training:
            with self.batch_log.open("a") as f:
                f.write(json.dumps({"step": self.state.global_step,
                                    "example_index": inputs["example_index"].tolist()}) + "\n")
        two_tasks = self.step_config.method == "step-by-step"
        values = self.scheduled_values()  # alpha, soft_weight, temperature of this update (student/schedules.py)
        offline_kd = getattr(self.kd, "offline", False)
        if offline_kd:
            self.kd.set_rows(inputs)
        fused = False
        if self.step_config.shared_encoder:
            rows = inputs["rationale_rows"] if two_tasks else inputs["rationale_rows"][:0]
            (label_sum, label_tokens), (rationale_sum, rationale_tokens) = shared_encoder_loss_sums(
                self.family, model, self.processing_class, inputs["input_ids"], inputs["attention_mask"],
                inputs["labels"], rows, inputs["rationale_labels"],
                (self.step_config.label_prefix, self.step_config.rationale_prefix), self.length_chunks,
                self.accelerator.unwrap_model(model))
        else:
            # soft labels: the hard loss from the gold candidate's row of the candidate pass (no label pass of its
            # own), unless online token KD needs the label pass (student/soft_labels.py)
            fused = self.soft_labels and bool(inputs["labels_are_gold"]) and (self.kd is None or offline_kd)
            if fused:
                from .soft_labels import label_task_sums

                label_sum, label_tokens, soft_sum, n_here = label_task_sums(
                    self.family, model, inputs, values["temperature"], self.rank_normalization,
                    self.accelerator.unwrap_model(model), self.length_chunks)
            else:
                label_sum, label_tokens = self._task_loss(model, inputs["input_ids"], inputs["attention_mask"],
                                                          inputs["labels"])
            rationale_sum, rationale_tokens = label_sum.new_zeros(()), label_tokens.new_zeros(())
            sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled  # never skip a pass: ranks gather in step
            if two_tasks and (sharded or inputs["rationale_labels"].ne(-100).any()):
                rationale = rationale_inputs(inputs) if sharded else inputs
                rationale_sum, rationale_tokens = self._task_loss(
                    model, rationale["rationale_input_ids"], rationale["rationale_attention_mask"],
                    rationale["rationale_labels"], task="rationale")
        global_counts = num_items_in_batch is not None and torch.is_tensor(num_items_in_batch) \
            and num_items_in_batch.numel() >= 2
        if global_counts:  # training: normalise by the global batch's token counts
            n_label, n_rationale = num_items_in_batch[:2].clamp(min=1).to(label_sum.dtype)
            scale = self.args.world_size  # DDP averages gradients over processes; undo that for a global mean
        else:  # evaluation loss on one batch
            n_label, n_rationale = label_tokens.clamp(min=1), rationale_tokens.clamp(min=1)
            scale = 1
        task_sums = (label_sum, rationale_sum) if self.kd is None else self.kd.compose(
            label_sum, rationale_sum, self._task_losses if model.training else None)  # + the teacher's terms
        loss, label_loss, rationale_loss = step_by_step_loss(*task_sums, n_label, n_rationale,
                                                             values["alpha"], two_tasks)
        if self.soft_labels:  # the label task with the teacher's distribution (student/soft_labels.py)
            from .soft_labels import label_task_loss, soft_loss_sum

            if not fused:
                soft_sum, n_here = soft_loss_sum(self.family, model, inputs, values["temperature"],
                                                 self.rank_normalization, self.accelerator.unwrap_model(model),
                                                 sharded=self.is_fsdp_enabled or self.is_deepspeed_enabled)
            n_soft = (num_items_in_batch[2] if global_counts else n_here).clamp(min=1).to(soft_sum.dtype)
            label_loss = label_task_loss(label_loss, soft_sum, n_soft, values["soft_weight"], values["temperature"])
            loss = task_mix(label_loss, rationale_loss, values["alpha"], two_tasks)
            if model.training and n_here > 0:
                self._task_losses["soft_loss"].append((soft_sum / n_here).item())  # KL per example, without T^2
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
            if self.soft_labels or any(getattr(self.step_config, f"{n}_schedule") for n in self.schedules):
                # the values the logged step's update used
                values = self.scheduled_values(max(self.state.global_step - 1, 0))
                if self.step_config.method != "step-by-step":
                    values.pop("alpha")  # weighs nothing in a one-task method
                if not self.soft_labels:
                    values.pop("soft_weight"), values.pop("temperature")
                logs.update({name: round(value, 10) for name, value in values.items()})
        super().log(logs, start_time)

    def score(self, records: list[dict[str, Any]], rationales: bool = False, rationale_first: bool = False
              ) -> tuple[float, list[dict[str, Any]]]:
        """Label accuracy and predictions on ``records`` (sharded over processes, gathered in order);
        ``rationale_first``: each label predicted after the student's own generated rationale."""
        from accelerate.utils import gather_object

        from .evaluate import evaluate_records
        from .sharding import scoring_model

        rank, processes = self.args.process_index, self.args.world_size
        shard = records[rank::processes]
        model = scoring_model(self.accelerator.unwrap_model(self.model))  # FSDP: a gathered copy
        config = self.step_config
        _, predictions = evaluate_records(
            model, self.processing_class, self.task, shard, label_prefix=config.label_prefix,
            rationale_prefix=config.rationale_prefix, batch_size=config.eval_batch_size, method=config.method,
            missing_rationale=config.missing_rationale,
            max_input_length=config.max_input_length, max_target_length=config.max_target_length,
            label_max_new_tokens=config.label_max_new_tokens, rationales=rationales, bf16=config.bf16,
            rank_normalization=self.rank_normalization, family=self.family,
            rationale_first=rationale_first) if shard else (0.0, [])
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
