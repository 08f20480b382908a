"""The Batch API teacher against the online one on the loopback servers: API calls made, model requests and cost.

The same examples go to ``openai:gpt-4o-mini`` (tests/teacher/fake_server.py) and to ``openai-batch:gpt-4o-mini``
(tests/teacher/fake_batch_server.py, whose batch lines are answered by the same online endpoint, so outputs, token
counts and scripted faults are the same). Two scenarios: no faults; and 5% of model requests answered 500 (drawn
per example and attempt, the same for both backends) plus 10% of the examples left unanswered by an expiring
batch (batch only: the online API has no such failure). Prints a Markdown table (docs/batch-api.md).

Run from the repository root: ``python experiments/bench_batch_api.py`` (about a minute for 1,000 examples).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "teacher"))
API_KEY = "sk-bench-not-a-real-key"


def examples(count: int) -> list[dict]:
    return [{"id": i, "premise": f"A person walks a dog in the park, scene {i} [ex:{i}].",
             "hypothesis": "Someone is outside.", "label": "entailment"} for i in range(count)]


def run(teacher, out: Path, count: int):
    from stepdistill.teacher import RationaleGenerator

    return RationaleGenerator("esnli", teacher, out, concurrency=16, progress=False).run(examples(count)).summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--max-requests", type=int, default=50_000, help="requests per batch")
    args = parser.parse_args()

    from fake_batch_server import BatchScript, FakeBatchServer
    from fake_server import FakeOpenAIServer, Script

    from stepdistill.teacher import OpenAITeacher
    from stepdistill.teacher.openai_batch import OpenAIBatchTeacher

    count = args.examples
    scenarios = {"no faults": dict(script={}, expire=set()),
                 "5% 500s, 10% expired": dict(script=dict(fault_rate=0.05, fault_kinds=("500",), seed=1),
                                              expire={str(i) for i in range(0, count, 10)})}
    print(f"{count:,} e-SNLI-shaped examples, gpt-4o-mini list prices; batch: up to {args.max_requests:,} requests "
          "per batch, 3 polls in progress before a batch ends\n")
    print("| scenario | backend | API calls | of which | model requests | usable | tokens | cost USD |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name, scenario in scenarios.items():
            with FakeOpenAIServer(Script(**scenario["script"])) as server:
                teacher = OpenAITeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, backoff_base=0.01,
                                        backoff_max=0.05)
                summary = run(teacher, Path(folder) / f"online-{len(name)}.jsonl", count)
                calls = server.requests
                print(f"| {name} | online | {calls:,} | {calls:,} completions | {summary.requests:,} | {summary.ok:,} "
                      f"| {summary.prompt_tokens + summary.completion_tokens:,} | {summary.cost:.6f} |")
            batch = BatchScript(polls_in_progress=3, expire=scenario["expire"])
            with FakeBatchServer(Script(**scenario["script"]), batch) as server:
                teacher = OpenAIBatchTeacher("gpt-4o-mini", base_url=server.url, api_key=API_KEY, poll_interval=0.01,
                                             max_requests=args.max_requests, progress=False)
                summary = run(teacher, Path(folder) / f"batch-{len(name)}.jsonl", count)
                c = teacher.calls
                detail = (f"{c['upload']} uploads, {c['create']} creates, {c['poll']} polls, {c['download']} downloads"
                          + (f", {c['list']} lists" if c["list"] else ""))
                print(f"| {name} | batch | {len(server.log):,} | {detail} | {summary.requests:,} | {summary.ok:,} "
                      f"| {summary.prompt_tokens + summary.completion_tokens:,} | {summary.cost:.6f} |")


if __name__ == "__main__":
    main()
