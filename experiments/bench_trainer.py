"""Benchmark: our step-by-step trainer against the paper's reference algorithm, end to end, in one run.

Reference algorithm (re-implemented here from its description, on the same HF Seq2SeqTrainer stack):
  - per step, two separate forward passes (label inputs, rationale inputs), each loss the model's own batch mean;
  - a collator that builds a pandas DataFrame per batch to split the two tasks;
  - every eval interval: a teacher-forced loss forward plus greedy generation of up to 64 tokens for the label
    input of EVERY example of the eval split, decoded and string-compared with the gold label.
Ours: `stepdistill.student.trainer.run_training` (per-task token means over the global batch, rank-scored validation
accuracy with one encoder pass per batch, best checkpoint kept) with the reference's data order (random sampler,
same seed: the same examples in every batch), run as:
  - "ours": the defaults, exactly what `stepdistill train` does with no options (its micro-batch is the derived
    default of ``per_device_batch_size=None``, printed in the table); with one torch thread each batch runs in 4 length-sorted chunks padded only to their own
    longest row (the same loss sum and update as one padded batch, less padding computed), with more threads in 1;
  - "ours shared": `shared_encoder=True`, one encoder pass per batch for both tasks (the task prefix goes to the
    decoder): a different model, so its accuracy is compared over seeds (skip with --no-shared);
  - with --one-chunk "ours 1 chunk": one padded batch per task, like the reference, to show what the chunks do;
  - with --grouped "ours grouped": length-grouped global batches (a different data order);
  - with --whole-batch "ours whole": micro-batches of the whole batch (the default before the derived one);
  - with --micro-batch N every "ours" side trains in micro-batches of N rows with gradient accumulation up to the
    global batch (``per_device_batch_size``): the same update, a quarter of the activations at N = batch / 4; each
    step's rows are dealt to its micro-batches longest first (``sort_micro_batches``), and with
    --unsorted-micro-batches "ours unsorted" runs them as the dataloader dealt them, to show what that does.
The reference also holds every teacher output of the train split in memory, as the released code does (549,367
strings for e-SNLI); ours parses only the lines of the examples it trains on. Every side runs once per --seeds seed.

Same initial weights (one tiny student built once and loaded by both), same examples, batch size, steps, learning
rate schedule, eval interval and machine. Each side runs in its own subprocess so peak memory (max RSS) is its own.
The figures compared are the wall and CPU time of `trainer.train()` (training + the evaluations during training; CPU
time counts every thread of the side's process, so it holds steadier than wall time when other jobs share the
machine); ours also
saves a checkpoint at every evaluation and reloads the best one at the end, the reference saves nothing.

    python experiments/bench_trainer.py --batch-size 64 --valid 2000 --seeds 0 1 2   # e-SNLI, 3 seeds, 2 threads
    python experiments/bench_trainer.py --batch-size 64 --valid 2000 --test 1000 --seeds 0 1 2 --micro-batch 16
    python experiments/bench_trainer.py --threads 1 --valid 9842   # e-SNLI, the whole valid split, like the reference
    python experiments/bench_trainer.py --task kinds-demo   # synthetic data, no shared data needed
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PREFIXES = ("[label] ", "[rationale] ")


def load_records(args) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, valid, test) records (train with usable rationales), identical for both workers."""
    from stepdistill.student.trainer import usable_rationale

    if args.task == "kinds-demo":
        from stepdistill.demo import demo_records

        splits = demo_records(Path(args.work_dir) / "demo-data",
                              {"train": args.train, "valid": args.valid, "test": args.test}, seed=0)
        train, valid, test = splits["train"], splits["valid"], splits["test"]
    else:
        from stepdistill.data import load_task_data, subsample
        from stepdistill.sources import DataError

        try:
            data = load_task_data(args.task, data_dir=args.data_dir, splits=("train", "valid", "test"))
        except (DataError, ValueError) as error:  # a missing folder or file, an unknown task
            raise SystemExit(f"error: {error}") from None
        train = [r for r in data.splits["train"] if usable_rationale(r)]
        train = subsample(train, count=args.train, seed=0)
        valid = subsample(data.splits["valid"], count=args.valid, seed=0)
        test = subsample(data.splits["test"], count=args.test, seed=0)
    # the reference, like the released code, needs a rationale for every training example
    return [r for r in train if usable_rationale(r)], valid, test


def released_code_teacher_outputs(args) -> list[dict]:
    """What the released code holds in memory besides the examples: every teacher output of the train split, parsed
    (its loader json-loads all ``train_CoT_*.json`` chunks, lists of strings, and adds them to the dataset as
    columns); ours reads only the lines of the examples it trains on."""
    from stepdistill.data import resolve_data_dir
    from stepdistill.sources import _find, read_jsonl

    path = _find(resolve_data_dir(args.data_dir) / args.task, "palm_train")
    return [obj["output"] for _, obj in read_jsonl(path)] if path else []


def build_init(args, train) -> str:
    from stepdistill.student.models import build_tiny_student, student_texts

    init = Path(args.work_dir) / "init"
    if not (init / "config.json").exists():
        shape = dict(d_model=args.d_model, d_kv=args.d_model // 4, d_ff=4 * args.d_model, num_layers=args.layers,
                     num_decoder_layers=args.layers)
        build_tiny_student(student_texts(train, *PREFIXES), init, seed=0, **shape)
    return str(init)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- reference ---------------------------------------------------------------------------------------------------

def run_reference(args, train, valid, test, init) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSeq2SeqLM.from_pretrained(init)

    def encode(records, with_rationale):
        columns = {
            "pred_input_ids": tokenizer([PREFIXES[0] + r["input"] for r in records], truncation=True,
                                        max_length=args.max_input_length)["input_ids"],
            "pred_labels": tokenizer([r["label"] for r in records], truncation=True,
                                     max_length=args.max_target_length)["input_ids"],
        }
        if with_rationale:
            columns["expl_input_ids"] = tokenizer([PREFIXES[1] + r["input"] for r in records], truncation=True,
                                                  max_length=args.max_input_length)["input_ids"]
            columns["expl_labels"] = tokenizer([r["rationale"] for r in records], truncation=True,
                                               max_length=args.max_target_length)["input_ids"]
        return Dataset.from_dict(columns)

    pad = DataCollatorForSeq2Seq(tokenizer, model=model)

    def collate(features):
        frame = pd.DataFrame(features)  # per-batch pandas, as the released collator does
        out = {}
        for task in ("pred", "expl"):
            if f"{task}_input_ids" in frame:
                part = frame[[f"{task}_input_ids", f"{task}_labels"]].rename(
                    columns={f"{task}_input_ids": "input_ids", f"{task}_labels": "labels"})
                rows = part.to_dict("records")
                for row in rows:
                    row["attention_mask"] = [1] * len(row["input_ids"])
                out[task] = pad(rows)
        return out

    class ReferenceTrainer(Seq2SeqTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            pred = model(**inputs["pred"])
            expl = model(**inputs["expl"])
            loss = args.alpha * pred.loss + (1 - args.alpha) * expl.loss
            return (loss, {"pred": pred, "expl": expl}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
            return super().prediction_step(model, inputs["pred"], prediction_loss_only=False, ignore_keys=ignore_keys,
                                           **gen_kwargs)

    gold = [r["label"] for r in valid]

    def compute_metrics(eval_pred):
        predictions = np.where(eval_pred.predictions < 0, tokenizer.pad_token_id, eval_pred.predictions)
        texts = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        return {"accuracy": float(np.mean([t.strip() == g for t, g in zip(texts, gold)]))}

    training_args = Seq2SeqTrainingArguments(
        output_dir=str(Path(args.work_dir) / "reference"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr, lr_scheduler_type="constant", eval_strategy="steps", eval_steps=args.eval_steps,
        save_strategy="no", logging_steps=args.eval_steps, predict_with_generate=True, generation_max_length=64,
        remove_unused_columns=False, seed=args.seed, report_to="none", use_cpu=not torch.cuda.is_available(),
        bf16=args.bf16, disable_tqdm=True, dataloader_pin_memory=False)
    trainer = ReferenceTrainer(model=model, args=training_args, train_dataset=encode(train, True),
                               eval_dataset=encode(valid, False), data_collator=collate, processing_class=tokenizer,
                               compute_metrics=compute_metrics)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    curve = [(row["step"], row["eval_accuracy"]) for row in trainer.state.log_history if "eval_accuracy" in row]
    return {"train_and_eval_seconds": seconds, "train_and_eval_cpu_seconds": cpu_seconds, "valid_curve": curve,
            "final_valid_accuracy": curve[-1][1], "best_valid_accuracy": max(a for _, a in curve),
            "kept_model": same_scorers(trainer.model, tokenizer, valid, args),
            "test": same_scorers(trainer.model, tokenizer, test, args)}


# -- ours --------------------------------------------------------------------------------------------------------

def run_ours(args, train, valid, test, init) -> dict:
    from stepdistill.student.trainer import TrainConfig, run_training

    config = TrainConfig(model=init, method="step-by-step", alpha=args.alpha, max_steps=args.steps,
                         batch_size=args.batch_size, learning_rate=args.lr, lr_scheduler_type="constant",
                         eval_steps=args.eval_steps, eval_batch_size=args.eval_batch_size, seed=args.seed,
                         bf16=args.bf16, max_input_length=args.max_input_length,
                         max_target_length=args.max_target_length, label_max_new_tokens=64,
                         logging_steps=args.eval_steps, group_by_length=args.group_by_length,
                         length_chunks=args.length_chunks, shared_encoder=args.shared_encoder,
                         per_device_batch_size=args.batch_size if args.whole else args.micro_batch,
                         gradient_checkpointing=args.checkpointing,
                         sort_micro_batches=not args.no_sort_micro_batches)
    from stepdistill.student.models import load_student
    from stepdistill.student.trainer import read_log

    run_dir = Path(args.work_dir) / (f"ours{'-grouped' if args.group_by_length else ''}{'-bf16' if args.bf16 else ''}"
                                     f"{'-shared' if args.shared_encoder else ''}"
                                     f"{'' if args.length_chunks is None else f'-chunks{args.length_chunks}'}"
                                     f"{'' if args.micro_batch is None else f'-mb{args.micro_batch}'}"
                                     f"{'-whole' if args.whole else ''}"
                                     f"{'-ckpt' if args.checkpointing else ''}"
                                     f"{'-unsorted' if args.no_sort_micro_batches else ''}"
                                     f"-seed{args.seed}")
    results = run_training(args.task, train, valid, [], config, run_dir)
    curve = [(row["step"], row["eval_accuracy"]) for row in read_log(run_dir) if "eval_accuracy" in row]
    model, tokenizer = load_student(run_dir / "model")
    from stepdistill.student.families import Seq2SeqFamily

    family = Seq2SeqFamily(PREFIXES if args.shared_encoder else ())
    return {"per_device_batch_size": results["per_device_batch_size"],
            "train_and_eval_seconds": results["train_seconds"], "train_and_eval_cpu_seconds": results["train_cpu_seconds"],
            "valid_curve": curve,
            "final_valid_accuracy": curve[-1][1], "best_valid_accuracy": max(a for _, a in curve),
            "wall_seconds_with_final_scoring": results["wall_seconds"],
            "kept_model": same_scorers(model, tokenizer, valid, args, family),
            "test": same_scorers(model, tokenizer, test, args, family)}


def same_scorers(model, tokenizer, records, args, family=None) -> dict:
    """Accuracy of a final model under both scorers (not timed): generate + string compare, and rank scoring with
    the summed and the per-token mean log-probability."""
    from stepdistill.student.evaluate import generate_texts, rank_scores

    inputs = [PREFIXES[0] + r["input"] for r in records]
    texts = generate_texts(model, tokenizer, inputs, args.eval_batch_size, args.max_input_length, 64, family=family)
    out = {"generate_string_match": sum(t.strip() == r["label"] for t, r in zip(texts, records)) / len(records),
           "rank": None, "rank_mean": None}
    if all(r.get("choices") for r in records):
        for key, normalization in (("rank", "sum"), ("rank_mean", "mean")):
            scores = rank_scores(model, tokenizer, inputs, [r["choices"] for r in records], args.eval_batch_size,
                                 args.max_input_length, normalization=normalization, family=family)
            out[key] = sum(r["choices"][max(range(len(s)), key=s.__getitem__)] == r["label"]
                           for s, r in zip(scores, records)) / len(records)
    return out


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.task == "kinds-demo":
        import stepdistill.demo  # noqa: F401  (registers the task)
    held = released_code_teacher_outputs(args) if args.worker == "reference" and args.task != "kinds-demo" else []
    train, valid, test = load_records(args)
    init = build_init(args, train)
    out = (run_reference if args.worker == "reference" else run_ours)(args, train, valid, test, init)
    out.update(peak_rss_mb=round(peak_rss_mb(), 1), train_examples=len(train), valid_examples=len(valid),
               test_examples=len(test), threads=torch.get_num_threads(), teacher_outputs_held=len(held))
    Path(args.result).write_text(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="esnli")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work-dir", default="bench-trainer")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--valid", type=int, default=500)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--max-input-length", type=int, default=128)
    parser.add_argument("--max-target-length", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, each run by every side")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # one worker's seed
    parser.add_argument("--test", type=int, default=2000, help="test examples scored once at the end (untimed)")
    parser.add_argument("--d-model", type=int, default=256, help="student width (d_kv = d/4, d_ff = 4d, 4 heads)")
    parser.add_argument("--layers", type=int, default=4, help="encoder and decoder layers each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also run ours with bf16 autocast")
    parser.add_argument("--grouped", action="store_true", help="also run ours with length-grouped batches")
    parser.add_argument("--one-chunk", action="store_true", help="also run ours with one padded batch per task")
    parser.add_argument("--no-shared", action="store_true", help="skip the 'ours shared' run (shared encoder)")
    parser.add_argument("--shared-encoder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--length-chunks", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--group-by-length", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="ours: per_device_batch_size (gradient accumulation up to --batch-size: same update, "
                             "less activation memory)")
    parser.add_argument("--checkpointing", action="store_true", help="ours: gradient_checkpointing")
    parser.add_argument("--whole-batch", action="store_true",
                        help="also run ours in micro-batches of the whole batch (the default before the derived one)")
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unsorted-micro-batches", action="store_true",
                        help="also run ours with micro-batches as the dataloader deals them (with --micro-batch)")
    parser.add_argument("--no-sort-micro-batches", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    runs = [("reference", []), ("ours", [])]
    runs += [] if args.no_shared else [("ours shared", ["--shared-encoder"])]
    runs += [("ours 1 chunk", ["--length-chunks", "1"])] if args.one_chunk else []
    runs += [("ours grouped", ["--group-by-length"])] if args.grouped else []
    runs += [("ours bf16", ["--bf16"])] if args.bf16 else []
    runs += [("ours unsorted", ["--no-sort-micro-batches"])] if args.unsorted_micro_batches else []
    runs += [("ours whole", ["--whole"])] if args.whole_batch else []
    flags = ("--bf16", "--grouped", "--one-chunk", "--no-shared", "--unsorted-micro-batches", "--whole-batch")
    base = [a for a in sys.argv[1:] if a not in flags]
    if "--seeds" in base:  # the workers get one --seed each
        at = base.index("--seeds")
        end = next((i for i in range(at + 1, len(base)) if base[i].startswith("--")), len(base))
        base = base[:at] + base[end:]
    results: dict[str, list[dict]] = {label: [] for label, _ in runs}
    for seed in args.seeds:  # the sides alternate within each seed, so a change of load hits both
        for label, extra in runs:
            result = Path(args.work_dir) / f"result-{label.replace(' ', '-')}-seed{seed}.json"
            cmd = [sys.executable, __file__, *base, "--seed", str(seed), "--worker", label.split()[0],
                   "--result", str(result), *extra]
            print(f"running {label}, seed {seed} ... (load average {os.getloadavg()[0]:.1f})", flush=True)
            done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                                  capture_output=True, text=True)
            if done.returncode:
                last = done.stderr.strip().splitlines()[-1:] or [""]
                sys.exit(last[0] if last[0].startswith("error:") else f"{label} failed:\n{done.stderr[-4000:]}")
            results[label].append(json.loads(result.read_text()))
            results[label][-1].update(seed=seed, load_average_after=round(os.getloadavg()[0], 1))
    print_tables(args, results)
    (Path(args.work_dir) / "bench_results.json").write_text(json.dumps(results, indent=2))


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    import statistics

    mean = statistics.fmean(values) * scale
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values) * scale:.{digits}f}" if len(values) > 1 else "")


def print_tables(args, results: dict[str, list[dict]]) -> None:
    ref = results["reference"]
    first = ref[0]
    print(f"\ntask {args.task}: {first['train_examples']} train / {first['valid_examples']} valid / "
          f"{first['test_examples']} test examples, {args.steps} steps, global batch {args.batch_size}, eval every "
          f"{args.eval_steps} steps, {args.threads} threads, tiny T5 d_model {args.d_model}, {args.layers}+"
          f"{args.layers} layers (same initial weights); seeds {', '.join(map(str, args.seeds))}: mean ± sd"
          + (f"; ours in micro-batches of {args.micro_batch}" if args.micro_batch else "")
          + ("; ours with gradient checkpointing" if args.checkpointing else ""))
    score = "rank" if first["test"]["rank"] is not None else "generate_string_match"
    header = (f"{'trainer':<14}{'micro':>6}{'train+eval s':>15}{'speed-up':>10}{'CPU s':>15}{'CPU speed-up':>14}"
              f"{'peak RSS MB':>14}{'valid (best) %':>16}{'test % (' + score.split('_')[0] + ')':>16}")
    print(header + "\n" + "-" * len(header))
    for label, runs in results.items():
        # ratios of summed times; CPU time (all threads of the process) is the steadier one on a shared machine
        wall = sum(r["train_and_eval_seconds"] for r in ref) / sum(r["train_and_eval_seconds"] for r in runs)
        cpu = (sum(r["train_and_eval_cpu_seconds"] for r in ref) / sum(r["train_and_eval_cpu_seconds"] for r in runs))
        micro = runs[0].get("per_device_batch_size") or args.batch_size  # the reference: one batch
        print(f"{label:<14}{micro:>6}{_mean_sd([r['train_and_eval_seconds'] for r in runs]):>15}{wall:>9.2f}x"
              f"{_mean_sd([r['train_and_eval_cpu_seconds'] for r in runs]):>15}{cpu:>13.2f}x"
              f"{_mean_sd([r['peak_rss_mb'] for r in runs], digits=0):>14}"
              f"{_mean_sd([r['best_valid_accuracy'] for r in runs], 100):>16}"
              f"{_mean_sd([r['test'][score] for r in runs], 100):>16}")
    if first["test"]["rank"] is not None:
        print("\ntest accuracy of the kept models by rank normalization (sum / per-token mean): " + "; ".join(
            f"{label}: {_mean_sd([r['test']['rank'] for r in runs], 100)} / "
            f"{_mean_sd([r['test']['rank_mean'] for r in runs], 100)}" for label, runs in results.items()))
    print("valid accuracy per eval (step:acc), per seed: " + "; ".join(
        f"{label}: " + " | ".join(", ".join(f"{s}:{100 * a:.1f}" for s, a in r["valid_curve"]) for r in runs)
        for label, runs in results.items()))

if __name__ == "__main__":
    main()
