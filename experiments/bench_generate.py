"""Benchmark of the rationale generator against the loopback OpenAI-compatible server (prints figures).

1. Throughput: 2,000 examples, 250 ms per request, concurrency 64, achieved rate over the ideal 64 / 0.25 s =
   256 requests/s; and the same ratio at concurrency 1 (on fewer examples: 2,000 would take 8 minutes).
2. Faults: 20% of requests faulted (429 with Retry-After, 500, timeout, malformed JSON, dropped connection,
   truncated output): every example ends as a parsed record or a recorded failure; no duplicates; counts by reason.
3. Crashes: the real `stepdistill generate` process SIGKILLed five times at random moments, then resumed: exactly one
   valid record per example, and requests sent in total <= examples + 5 x concurrency.

Run from the repository root: ``python experiments/bench_generate.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk-bench-not-a-real-key"


def start_server(latency: float, fault_rate: float = 0.0, hang: float = 3.0) -> tuple[subprocess.Popen, str]:
    # a separate process, so that the server does not share the client's interpreter lock
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "teacher" / "fake_server.py"), "--latency",
                                str(latency), "--fault-rate", str(fault_rate), "--seed", "1", "--hang-seconds",
                                str(hang)], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/_stats") as response:
        return json.loads(response.read())


def examples(count: int) -> list[dict]:
    return [{"id": i, "premise": f"A person walks a dog in the park, scene {i} [ex:{i}].",
             "hypothesis": "Someone is outside.", "label": "entailment"} for i in range(count)]


def run_generator(url: str, count: int, concurrency: int, out: Path, **teacher_options):
    from stepdistill.teacher import OpenAITeacher, RationaleGenerator

    teacher = OpenAITeacher("gpt-4o-mini", base_url=url, api_key=API_KEY, **teacher_options)
    generator = RationaleGenerator("esnli", teacher, out, concurrency=concurrency, progress=False)
    started = time.perf_counter()
    result = generator.run(examples(count))
    return result, time.perf_counter() - started


def throughput(workdir: Path, count: int, latency: float) -> None:
    server, url = start_server(latency)
    try:
        print(f"== throughput: {latency * 1000:.0f} ms per request ==")
        for concurrency, n in ((64, count), (1, 40)):
            cpu = time.process_time()
            result, seconds = run_generator(url, n, concurrency, workdir / f"throughput_c{concurrency}.jsonl")
            cpu = time.process_time() - cpu
            ideal = concurrency / latency
            achieved = result.summary.requests / seconds
            print(f"concurrency {concurrency:>2}: {n:,} examples, {result.summary.requests:,} requests in {seconds:.2f}s: "
                  f"{achieved:.1f} req/s vs ideal {ideal:.1f} req/s -> ratio {achieved / ideal:.3f} "
                  f"(client CPU {cpu / n * 1000:.2f} ms per example; load average {os.getloadavg()[0]:.1f} "
                  f"on {os.cpu_count()} cores)")
    finally:
        server.terminate()


def faults(workdir: Path, count: int, latency: float) -> None:
    server, url = start_server(latency, fault_rate=0.2, hang=3.0)
    out = workdir / "faults.jsonl"
    try:
        print("\n== 20% of requests faulted (seeded), concurrency 64, 3 attempts per example, 1 s timeout ==")
        result, seconds = run_generator(url, count, 64, out, timeout=1.0, max_attempts=3, backoff_base=0.1,
                                        backoff_max=1.0)
        stats = server_stats(url)
    finally:
        server.terminate()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    ids = Counter(record["id"] for record in lines)
    statuses = Counter(record["status"] for record in lines)
    s = result.summary
    print(f"{count:,} examples in {seconds:.1f}s; {stats['requests']:,} requests; faults injected by the server: "
          + ", ".join(f"{k} {v}" for k, v in sorted(stats["faults"].items())))
    print(f"records: {len(lines):,}, distinct ids {len(ids):,}, duplicates {sum(v - 1 for v in ids.values())}; "
          f"by status: {dict(statuses)}")
    print("retried attempts by reason: " + ", ".join(f"{k} {v}" for k, v in s.retried.most_common()))
    print("failed after all retries, by reason: " + (", ".join(f"{k} {v}" for k, v in s.request_failures.most_common()) or "none"))
    print("parse failures by reason: " + (", ".join(f"{k} {v}" for k, v in s.parse_failures.most_common()) or "none"))
    every = sum(statuses.values()) == count == len(ids) and set(statuses) <= {"ok", "failed", "parse_error"}
    print(f"every example ends as a parsed record or a recorded failure, once: {every}")


def kills(workdir: Path, count: int, latency: float, concurrency: int, kills: int, seed: int) -> None:
    server, url = start_server(latency)
    rng = random.Random(seed)
    data = workdir / "kill_examples.jsonl"
    data.write_text("".join(json.dumps(example) + "\n" for example in examples(count)))
    out = workdir / "kill.jsonl"
    command = [sys.executable, "-m", "stepdistill.cli", "generate", "--task", "esnli", "--source", "jsonl",
               "--files", json.dumps({"train": str(data)}), "--teacher", "openai:gpt-4o-mini", "--base-url", url,
               "--out", str(out), "--concurrency", str(concurrency), "--progress", "false"]
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    print(f"\n== {kills} SIGKILLs at random moments, then resume: {count:,} examples, concurrency {concurrency} ==")
    from stepdistill.teacher.generator import read_cache

    try:
        for k in range(kills):
            delay = rng.uniform(1.5, 4.0)  # the process needs ~1 s to start; a run takes ~8 s
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            finished = process.poll() is not None
            process.send_signal(signal.SIGKILL)
            process.wait()
            records, partial = read_cache(out)
            print(f"kill {k + 1} after {delay:.2f}s{' (had already finished)' if finished else ''}: "
                  f"{len(records):,} records on disk, partial final line: {partial} bytes; "
                  f"server requests so far {server_stats(url)['requests']:,}")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        stats = server_stats(url)
    finally:
        server.terminate()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    ids = Counter(record["id"] for record in lines)
    valid = sum(record["status"] == "ok" for record in lines)
    bound = count + kills * concurrency
    print(done.stdout.strip().splitlines()[0] if done.returncode == 0 else done.stderr)
    print(f"after resume: {len(lines):,} lines, {len(ids):,} distinct ids, {valid:,} valid records, "
          f"max records per id {max(ids.values())}; exactly one valid record per example: "
          f"{len(lines) == len(ids) == valid == count}")
    print(f"requests sent in total: {stats['requests']:,} <= examples + {kills} x concurrency = {bound:,}: "
          f"{stats['requests'] <= bound} (lost to the kills: {stats['requests'] - count})")
    assert API_KEY not in out.read_text() + done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--only", choices=["throughput", "faults", "kills"], default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.only in (None, "throughput"):
            throughput(workdir, args.examples, args.latency)
        if args.only in (None, "faults"):
            faults(workdir, args.examples, args.latency)
        if args.only in (None, "kills"):
            kills(workdir, args.examples, args.latency, concurrency=64, kills=5, seed=0)


if __name__ == "__main__":
    main()
