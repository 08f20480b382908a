"""The `paper` preset's student on one GPU: T5-v1.1-base shapes (random weights, built from a config: no hub), the
paper's batch 64 and length caps, bf16. Trains a few hundred steps of step-by-step on e-SNLI per variant, and prints
steps/s, examples/s, model FLOPs utilisation (MFU), peak GPU memory, the cost of one evaluation, and the projected
wall time of a 10,000-step run (training + the preset's 40 evaluations + test).

One prepared check that fits 10 minutes on an H100/H200 (about 1 minute per variant after a minute of setup):

    python experiments/gpu_paper_check.py --data-dir ../shared/data --out gpu-check   # needs: gpu

`--tiny` swaps in a 2-layer, 64-wide T5 so the whole script runs on a CPU in under a minute (what the tests run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# google/t5-v1_1-base's config.json (247.6M parameters), written out because there is no hub here
T5_V1_1_BASE = dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    layer_norm_epsilon=1e-6, vocab_size=32128)
TINY = dict(T5_V1_1_BASE, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2)
PAPER = dict(batch_size=64, learning_rate=5e-5, max_input_length=1024, max_target_length=256, eval_steps=250,
             max_steps=10_000)
# dense bf16 peak FLOP/s by device name (NVIDIA data sheets, SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
VARIANTS = {  # name: TrainConfig changes
    "two-pass": {},
    "two-pass, length-grouped": {"group_by_length": True},
    "shared encoder": {"shared_encoder": True},
    "shared encoder, length-grouped": {"shared_encoder": True, "group_by_length": True},
}


def build_student(train, out: Path, shape: dict, seed: int = 0) -> Path:
    """A SentencePiece tokenizer trained on the task's text and a randomly initialised T5 of ``shape``."""
    import shutil
    import tempfile

    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    from stepdistill.student.models import student_texts, train_sentencepiece

    if (out / "config.json").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        spm = train_sentencepiece(student_texts(train, "[label] ", "[rationale] "), tmp, 32_000)
        tokenizer = T5Tokenizer(**T5Tokenizer.convert_to_native_format(vocab_file=str(spm), extra_ids=0))
        tokenizer.save_pretrained(out)
        shutil.copy(spm, out / "spiece.model")
    # the model keeps T5's 32,128-row vocabulary (its logits cost what the paper's do) even where the tokenizer is
    # smaller
    config = T5Config(**{**shape, "vocab_size": max(shape["vocab_size"], len(tokenizer))},
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(out)
    return out


def model_flops_per_step(model, batch_tokens: dict[str, float]) -> float:
    """6 x parameters x tokens for one training step (forward + backward), encoder and decoder counted on their own
    tokens; attention's quadratic term is small at these lengths and left out."""
    encoder = sum(p.numel() for p in model.get_encoder().parameters())
    decoder = sum(p.numel() for p in model.get_decoder().parameters()) + model.lm_head.weight.numel()
    return 6 * (encoder * batch_tokens["encoder"] + decoder * batch_tokens["decoder"])


def real_tokens_per_step(train, tokenizer, config, batch_size: int) -> dict[str, float]:
    """Mean real (unpadded) tokens a step computes: the label and rationale passes' encoder and decoder tokens."""
    sample = train[:2000]
    inputs = [len(ids) for ids in tokenizer([config.label_prefix + r["input"] for r in sample], truncation=True,
                                            max_length=config.max_input_length)["input_ids"]]
    labels = [len(ids) for ids in tokenizer([r["label"] for r in sample])["input_ids"]]
    rationales = [len(ids) for ids in tokenizer([r["rationale"] for r in sample], truncation=True,
                                                max_length=config.max_target_length)["input_ids"]]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    encoder_passes = 1 if config.shared_encoder else 2
    return {"encoder": batch_size * mean(inputs) * encoder_passes, "decoder": batch_size * (mean(labels) + mean(rationales))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--task", default="esnli")
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant")
    parser.add_argument("--train", type=int, default=20_000, help="training examples (all there are, at most)")
    parser.add_argument("--valid", type=int, default=1000, help="examples of the one evaluation timed per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide T5 (a CPU check of the script)")
    args = parser.parse_args()

    import torch

    from stepdistill.data import load_task_data, subsample
    from stepdistill.student.models import load_student
    from stepdistill.student.progress import ProgressCallback
    from stepdistill.student.trainer import TrainConfig, run_training, usable_rationale

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = load_task_data(args.task, data_dir=args.data_dir)
    train = subsample([r for r in data.splits["train"] if usable_rationale(r)], count=min(args.train, len(
        [r for r in data.splits["train"] if usable_rationale(r)])), seed=0)
    valid = subsample(data.splits["valid"], count=min(args.valid, len(data.splits["valid"])), seed=0)
    init = build_student(train, out / "init", TINY if args.tiny else T5_V1_1_BASE)
    model, tokenizer = load_student(init)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((flops for name, flops in PEAK_BF16.items() if name in device), None)
    params = sum(p.numel() for p in model.parameters())
    print(f"device {device}; student {params / 1e6:.1f}M parameters ({'tiny' if args.tiny else 't5-v1_1-base'}), "
          f"tokenizer {len(tokenizer)} pieces; {len(train)} train / {len(valid)} valid examples; setup "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for name in args.variants:
        config = TrainConfig(model=str(init), method="step-by-step", max_steps=args.steps,
                             eval_steps=args.steps, save_steps=args.steps, bf16=not args.fp32,
                             batch_size=PAPER["batch_size"], learning_rate=PAPER["learning_rate"],
                             max_input_length=PAPER["max_input_length"], max_target_length=PAPER["max_target_length"],
                             logging_steps=max(1, args.steps // 10), **VARIANTS[name])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        run_dir = out / name.replace(", ", "-").replace(" ", "-")
        progress = ProgressCallback(every_seconds=30, stream=sys.stderr, prefix=f"  [{name}] ", bar=False)
        results = run_training(args.task, train, valid, [], config, run_dir, callbacks=[progress])
        eval_s = results["eval_seconds_during_training"]
        steps_per_s = args.steps / (results["train_seconds"] - eval_s)
        flops = model_flops_per_step(model, real_tokens_per_step(train, tokenizer, config, config.batch_size))
        full_valid = len(data.splits["valid"]) / len(valid) * eval_s  # one evaluation on the whole valid split
        projected = (PAPER["max_steps"] / steps_per_s + PAPER["max_steps"] / PAPER["eval_steps"] * full_valid
                     + len(data.splits.get("test", [])) / len(valid) * eval_s)
        row = {"variant": name, "steps_per_s": round(steps_per_s, 3),
               "examples_per_s": round(steps_per_s * config.batch_size, 1),
               "mfu": None if peak is None else round(flops * steps_per_s / peak, 4),
               "peak_gpu_mb": results.get("gpu_peak_allocated_mb"), "peak_rss_mb": results.get("cpu_peak_rss_mb"),
               "eval_s": round(eval_s, 2), "valid_accuracy": results["valid_accuracy"],
               "projected_10k_run_min": round(projected / 60, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = f"{'variant':<32}{'steps/s':>9}{'ex/s':>8}{'MFU':>7}{'peak GPU MB':>13}{'eval s':>8}{'10k-step run min':>18}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"{r['variant']:<32}{r['steps_per_s']:>9.2f}{r['examples_per_s']:>8.0f}{mfu:>7}"
              f"{r['peak_gpu_mb'] or 0:>13.0f}{r['eval_s']:>8.1f}{r['projected_10k_run_min']:>18.1f}")
    print(f"(eval: {len(valid)} valid examples ranked; the projection scales it to the whole valid split every "
          f"{PAPER['eval_steps']} steps and the test split once) total {time.perf_counter() - started:.0f} s")
    (out / "gpu_check.json").write_text(json.dumps({"device": device, "parameters": params, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
