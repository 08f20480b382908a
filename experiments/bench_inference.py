"""Benchmark: the trained student against the teacher, on the same machine and the same examples.

Rows (each measured in its own subprocess, so peak memory is its own):
  - student via `predict` (fp32, and with --int8 also dynamic int8 at load time), batch 1 and batch 64;
  - with --onnx, the student exported to ONNX (`export --format onnx`, fp32 and onnxruntime's int8) and run by
    `predict` through onnxruntime, batch 1 and batch 64 (the exports are written under --work-dir);
  - student via `stepdistill serve` (a separate server process) under --clients concurrent loopback clients, each
    sending one input per request (dynamic batching gathers them), then requests of 64 inputs;
  - the local HF teacher (`HFTeacher`) writing its few-shot chain of thought, batch 1 and batch 64.
Figures: examples/s, p50/p95 latency of one call (one request for serve), accuracy against gold on the examples,
model size on disk, the resident memory that loading the student and one batch of 64 adds ("loaded"), peak RSS
(mostly torch and the data; for serve: the server process's VmHWM), and how many labels equal fp32 `predict`'s.
The table ends with student/teacher ratios, and with --onnx the ONNX rows against the PyTorch fp32 row.

The default teacher is a randomly initialised tiny Llama (4 layers, 256 wide) with a BPE tokenizer trained here on
the prompt text: it measures what generating the chain of thought costs (the few-shot prompt plus up to
--teacher-max-new-tokens tokens per example), not a real teacher's quality. `--teacher PATH` takes any local causal LM
folder; a name such as `smollm2-135m` is resolved through `stepdistill.pretrained.resolve_pretrained` where that
module exists.

    python experiments/bench_inference.py --run-dir runs/esnli_sbs --data-dir ../shared/data --int8
    python experiments/bench_inference.py --run-dir runs/esnli_sbs --examples 128 --teacher-examples 16 --clients 8
    python experiments/bench_inference.py --run-dir runs/esnli_sbs --int8 --onnx --skip serve teacher
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TINY_TEACHER = "tiny-llama"


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def latency_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": 1000 * percentile(values, 50), "p95_ms": 1000 * percentile(values, 95)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """The resident memory now (VmRSS), for what loading the student adds (the peak is mostly torch and the data)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def load_examples(args) -> tuple[object, list[dict]]:
    from stepdistill.data import load_task_data

    data = load_task_data(args.task, data_dir=args.data_dir, splits=["valid"])
    return data.task, data.splits["valid"][: args.examples]


def accuracy(task, predictions: list[str | None], records: list[dict]) -> float:
    return sum(bool(p is not None and task.is_correct(p, r["label"], r.get("fields")))
               for p, r in zip(predictions, records)) / len(records)


# -- measurements, each run in a child process ------------------------------------------------------------------

def onnx_folder(args, quantize: bool) -> Path:
    return Path(args.work_dir) / ("onnx-int8" if quantize else "onnx-fp32")


def measure_student(args) -> dict:
    import io

    import torch

    from stepdistill.serving.export import find_model_folder, load_for_serving
    from stepdistill.student.predict import predict

    task, records = load_examples(args)
    inputs = [r["fields"] for r in records]
    before = rss_mb()
    if args.measure.startswith("onnx"):
        folder = onnx_folder(args, args.measure == "onnx-int8")
        student = load_for_serving(folder)
    else:
        folder = find_model_folder(args.run_dir)
        student = load_for_serving(args.run_dir, quantize="int8" if args.measure == "student-int8" else None)
    predict(student, inputs[:64], batch_size=64)  # warm-up (a full batch: the allocators reach their working size)
    loaded_mb = rss_mb() - before
    single = []
    for item in inputs[: args.batch1_examples]:
        start = time.perf_counter()
        predict(student, [item], batch_size=1)
        single.append(time.perf_counter() - start)
    batched, predictions = [], []
    for offset in range(0, len(inputs), 64):
        start = time.perf_counter()
        predictions += [row["prediction"] for row in predict(student, inputs[offset:offset + 64], batch_size=64)]
        batched.append(time.perf_counter() - start)
    if args.measure.startswith("onnx"):  # the graphs hold the weights: their files are what is loaded
        weights_mb = sum(f.stat().st_size for f in folder.iterdir() if ".onnx" in f.name) / 1e6
    else:
        buffer = io.BytesIO()
        torch.save(student.model.state_dict(), buffer)  # int8: the packed weights a quantised model holds
        weights_mb = len(buffer.getvalue()) / 1e6
    return {"b1_ex_s": len(single) / sum(single), **{f"b1_{k}": v for k, v in latency_ms(single).items()},
            "b64_ex_s": len(inputs) / sum(batched), **{f"b64_{k}": v for k, v in latency_ms(batched).items()},
            "accuracy": accuracy(task, predictions, records), "examples": len(inputs), "predictions": predictions,
            "disk_mb": folder_mb(folder), "weights_mb": weights_mb, "loaded_mb": loaded_mb,
            "peak_rss_mb": peak_rss_mb(), "cpu_s": time.process_time()}


async def _clients(url: str, bodies: list[dict], clients: int) -> tuple[list[float], list[dict]]:
    """Send every body, ``clients`` at a time (each client sequential); (latency per request, replies in order)."""
    import aiohttp

    latencies, replies = [0.0] * len(bodies), [None] * len(bodies)
    queue = list(range(len(bodies)))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client():
            while queue:
                i = queue.pop(0)
                start = time.perf_counter()
                async with session.post(url, json=bodies[i]) as response:
                    replies[i] = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"server answered {response.status}: {replies[i]}")
                latencies[i] = time.perf_counter() - start
        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, replies


def measure_serve(args) -> dict:
    task, records = load_examples(args)
    inputs = [r["fields"] for r in records]
    server = subprocess.Popen([sys.executable, "-m", "stepdistill.cli", "serve", "--run-dir", args.run_dir,
                               "--port", "0", "--max-batch-size", "64", "--max-wait-ms", str(args.max_wait_ms)],
                              stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = server.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"server did not start: {line!r}")
        url = line.split()[3] + "/predict"
        asyncio.run(_clients(url, [{"inputs": inputs[:2]}], 1))  # warm-up
        start = time.perf_counter()
        single, replies = asyncio.run(_clients(url, [{"inputs": [x]} for x in inputs], args.clients))
        single_wall = time.perf_counter() - start
        predictions = [reply["predictions"][0]["prediction"] for reply in replies]
        start = time.perf_counter()
        batched, _ = asyncio.run(_clients(url, [{"inputs": inputs[i:i + 64]} for i in range(0, len(inputs), 64)],
                                          args.clients))
        batched_wall = time.perf_counter() - start
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    finally:
        server.terminate()
        server.wait(30)
    from stepdistill.serving.export import find_model_folder

    return {"b1_ex_s": len(inputs) / single_wall, **{f"b1_{k}": v for k, v in latency_ms(single).items()},
            "b64_ex_s": len(inputs) / batched_wall, **{f"b64_{k}": v for k, v in latency_ms(batched).items()},
            "accuracy": accuracy(task, predictions, records), "examples": len(inputs), "predictions": predictions,
            "disk_mb": folder_mb(find_model_folder(args.run_dir)), "peak_rss_mb": peak}


def build_tiny_teacher(folder: Path, texts: list[str]) -> Path:
    """A random tiny Llama with a byte-level BPE tokenizer trained on ``texts`` (saved once, reused)."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<eos>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def teacher_path(args, prompts: list[str]) -> Path:
    if args.teacher == TINY_TEACHER:
        return build_tiny_teacher(Path(args.work_dir) / "tiny-llama-teacher", prompts)
    if Path(args.teacher).is_dir():
        return Path(args.teacher)
    try:
        from stepdistill.pretrained import resolve_pretrained
    except ImportError:
        raise SystemExit(f"error: --teacher {args.teacher}: not a folder, and stepdistill.pretrained is not "
                         f"available to resolve the name") from None
    return Path(resolve_pretrained(args.teacher))


def measure_teacher(args) -> dict:
    from stepdistill.teacher.prompts import template_for_task
    from stepdistill.teacher.teachers import GenerationParams, HFTeacher

    task, records = load_examples(args)
    records = records[: args.teacher_examples]
    template = template_for_task(task)
    prompts = [template.render(task.prompt_fields(r["fields"])) for r in records]
    path = teacher_path(args, prompts * 4)
    params = GenerationParams(max_new_tokens=args.teacher_max_new_tokens, stop=template.stop)
    teacher = HFTeacher(str(path), device="cpu", batch_size=64)
    teacher.generate_sync(prompts[:1], GenerationParams(max_new_tokens=2))  # load + warm-up
    single, replies = [], []
    for prompt in prompts[: args.batch1_examples]:
        start = time.perf_counter()
        teacher.generate_sync([prompt], params)
        single.append(time.perf_counter() - start)
    batched = []
    for offset in range(0, len(prompts), 64):
        start = time.perf_counter()
        replies += teacher.generate_sync(prompts[offset:offset + 64], params)
        batched.append(time.perf_counter() - start)
    labels = [task.parse_teacher(reply.outputs[0], r["fields"]).label for reply, r in zip(replies, records)]
    return {"b1_ex_s": len(single) / sum(single), **{f"b1_{k}": v for k, v in latency_ms(single).items()},
            "b64_ex_s": len(prompts) / sum(batched), **{f"b64_{k}": v for k, v in latency_ms(batched).items()},
            "accuracy": accuracy(task, labels, records), "examples": len(prompts), "disk_mb": folder_mb(path),
            "peak_rss_mb": peak_rss_mb(), "prompt_tokens": statistics.mean(r.prompt_tokens for r in replies),
            "new_tokens": statistics.mean(r.completion_tokens for r in replies)}


MEASURES = {"student": measure_student, "student-int8": measure_student, "onnx": measure_student,
            "onnx-int8": measure_student, "serve": measure_serve, "teacher": measure_teacher}


def export_onnx(args) -> None:
    """The fp32 ONNX export of --run-dir and its int8 copy, under --work-dir (rewritten on every run)."""
    from stepdistill.serving.export import export_student

    fp32, int8 = onnx_folder(args, False), onnx_folder(args, True)
    for folder in (fp32, int8):
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
    start = time.perf_counter()
    export_student(args.run_dir, fp32, format="onnx")
    export_student(fp32, int8, format="onnx", quantize="int8")
    print(f"exported ONNX fp32 and int8 under {args.work_dir} in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)


# -- driver ------------------------------------------------------------------------------------------------------

def run_child(measure: str, argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv, "--measure", measure], capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or [""]
        raise SystemExit(last[0] if last[0].startswith("error:") else
                         f"error: measuring {measure} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cell(row: dict, key: str) -> str:
    value = row.get(key)  # None: not measured for this row (loaded MB of serve and the teacher)
    return "" if value is None else value if isinstance(value, str) else \
        f"{value:.3f}" if key == "accuracy" else f"{value:,.1f}"


def _ratio_cells(row: dict, base: dict, keys: list[str]) -> list[str]:
    # speed: row/base (higher is better for the row); latency, size, memory: base/row (higher is better too)
    return ["" if k in ("accuracy", "same_label") or not row.get(k) or not base.get(k) else
            f"{(row[k] / base[k]) if 'ex_s' in k else (base[k] / row[k]):.2f}x" for k in keys]


def table(rows: dict[str, dict], clients: int) -> str:
    names = {"student": "student predict", "student-int8": "student predict int8", "onnx": "student onnx",
             "onnx-int8": "student onnx int8", "serve": f"student serve x{clients} clients",
             "teacher": "teacher (HF, CoT)"}
    header = ["", "ex/s b1", "p50 b1 ms", "p95 b1 ms", "ex/s b64", "p50 b64 ms", "p95 b64 ms", "accuracy",
              "same label", "disk MB", "weights MB", "loaded MB", "peak RSS MB"]
    keys = ["b1_ex_s", "b1_p50_ms", "b1_p95_ms", "b64_ex_s", "b64_p50_ms", "b64_p95_ms", "accuracy", "same_label",
            "disk_mb", "weights_mb", "loaded_mb", "peak_rss_mb"]
    for row in rows.values():  # in memory; serve loads what predict loads, a teacher's weights are its folder
        row.setdefault("weights_mb", rows.get("student", {}).get("weights_mb") if "accuracy" in row and
                       "prompt_tokens" not in row else row["disk_mb"])
    lines = [header]
    for measure, row in rows.items():
        lines.append([names[measure]] + [_cell(row, k) for k in keys])
    if "student" in rows:
        for measure in [m for m in rows if m.startswith("onnx")]:
            lines.append([f"{names[measure]} vs student predict"] + _ratio_cells(rows[measure], rows["student"], keys))
    if "teacher" in rows:
        for measure in [m for m in rows if m != "teacher"]:
            lines.append([f"{names[measure]} vs teacher"] + _ratio_cells(rows[measure], rows["teacher"], keys))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
                     for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a trained run folder or export (its task's data is read)")
    parser.add_argument("--task", default="esnli")
    parser.add_argument("--data-dir", default=None, help="default: $STEPDISTILL_DATA_DIR or ../shared/data")
    parser.add_argument("--examples", type=int, default=256, help="valid examples for the student rows")
    parser.add_argument("--batch1-examples", type=int, default=32, help="examples timed one at a time")
    parser.add_argument("--clients", type=int, default=16, help="concurrent loopback clients for serve")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="serve's batching wait")
    parser.add_argument("--int8", action="store_true", help="also the student with int8 dynamic quantisation")
    parser.add_argument("--onnx", action="store_true", help="also the student exported to ONNX (fp32 and int8) "
                        "and run through onnxruntime")
    parser.add_argument("--skip", nargs="*", default=[], choices=["serve", "teacher"], help="rows to leave out")
    parser.add_argument("--teacher", default=TINY_TEACHER, help="tiny-llama, a causal LM folder, or a name for "
                        "stepdistill.pretrained.resolve_pretrained")
    parser.add_argument("--teacher-examples", type=int, default=64)
    parser.add_argument("--teacher-max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every child (default: torch's)")
    parser.add_argument("--work-dir", default="bench-inference")
    parser.add_argument("--measure", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    if args.measure:
        from stepdistill.sources import DataError

        try:
            print(json.dumps(MEASURES[args.measure](args)))
        except DataError as error:  # a missing data folder or split
            raise SystemExit(f"error: {error}") from None
        return
    from stepdistill.serving.export import find_model_folder

    try:
        find_model_folder(args.run_dir)
    except ValueError as error:
        raise SystemExit(f"error: --run-dir {error}") from None
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    if args.onnx:
        export_onnx(args)
    argv = [arg for arg in sys.argv[1:] if arg not in ("--int8", "--onnx")]
    if "--skip" in argv:  # the children take no --skip (nor its values)
        argv = argv[:argv.index("--skip")] + [a for a in argv[argv.index("--skip") + 1 + len(args.skip):]]
    measures = (["student"] + (["student-int8"] if args.int8 else []) + (["onnx", "onnx-int8"] if args.onnx else [])
                + [m for m in ("serve", "teacher") if m not in args.skip])
    rows = {}
    for measure in measures:
        rows[measure] = run_child(measure, argv)
        print(f"{measure}: {json.dumps({k: v for k, v in rows[measure].items() if k != 'predictions'})}",
              file=sys.stderr, flush=True)
    reference = rows["student"]["predictions"]
    for measure, row in rows.items():
        if "predictions" in row:
            same = sum(a == b for a, b in zip(row.pop("predictions"), reference))
            row["same_label"] = f"{same}/{len(reference)}"
    print(table(rows, args.clients))
    (Path(args.work_dir) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
