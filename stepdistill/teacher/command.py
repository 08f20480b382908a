"""The ``stepdistill generate`` command: teacher rationales for a task split, into a resumable JSON Lines cache."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from ..options import DataOptions


def generate_command(data: DataOptions, teacher: str = "replay:../shared/data", out: str = "rationales.jsonl",
                     split: str = "train", limit: int | None = None, shard: str | None = None, concurrency: int = 16,
                     prompt: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                     n: int = 1, seed: int | None = None, label_logprobs: bool = False, top_logprobs: int = 20,
                     token_logprobs: int = 0,
                     endpoint: str = "chat", base_url: str | None = None,
                     api_key: str | None = None, timeout: float = 60.0, max_attempts: int = 6,
                     requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                     prices: dict[str, list[float]] | None = None, device: str = "auto", batch_size: int = 8,
                     dtype: str = "auto", prompt_format: str = "auto", system_prompt: str | None = None,
                     batch_poll_interval: float = 60.0, batch_max_rounds: int = 3, batch_max_requests: int = 50_000,
                     batch_max_bytes: int = 200_000_000, filter_gold: bool = False, retry_failed: bool = False,
                     merge: str | None = None, summary_json: str | None = None, progress: bool = True,
                     synthesize: int | None = None, shots: int = 4, synthesis_seed: int = 0,
                     near_threshold: float = 0.8) -> None:
    """Ask a teacher for a rationale and label per example, resumably (flat names work: --task, --data-dir).

    A rerun sends nothing for cached work. With --synthesize N the teacher writes N new examples instead
    (docs/synthetic.md).

    Prints a progress bar (done, cached, failed, tokens, cost) and a summary: parse failures by reason, request
    failures by reason and teacher-label agreement with gold. Exits with an error when no usable rationale came
    out (every request or parse failed), saying how many failed and why.

    Args:
        data: Where the examples come from (the same options as ``stepdistill data``).
        teacher: ``openai:MODEL`` (any OpenAI-compatible server), ``openai-batch:MODEL`` (the OpenAI Batch API: the
            same requests, answered within 24 hours at half the price; a killed run resumes its batches),
            ``hf:PATH`` (local causal LM), ``replay:DIR`` (released outputs: a ../shared/data-style folder or the
            official datasets/ layout) or ``student:RUN_DIR`` (a trained stepdistill student, its run folder or
            export: its generated rationale, its label and its candidate scores).
        out: The JSON Lines cache to write (appended to; one record per example).
        split: Split to generate for.
        limit: Only the first N examples (after sharding); with --synthesize, only the first N slots.
        shard: ``i/n``: only the examples whose id hashes to shard i of n (run shards on different machines, then
            ``--merge``).
        concurrency: Requests in flight at once (API teacher; Batch API teacher: batches of up to
            --batch-max-requests each).
        prompt: Few-shot template file (default: the task's built-in template).
        max_new_tokens: Token limit per answer.
        temperature: Sampling temperature (0 = greedy).
        top_p: Nucleus sampling mass.
        n: Samples per example; > 1 enables self-consistency (majority vote on the label; needs temperature > 0).
        seed: Sampling seed, where the teacher supports one.
        label_logprobs: Also record the teacher's distribution over the candidate labels (label_logprobs, for soft
            labels): openai/openai-batch from the answer tokens' top_logprobs, hf from every candidate's score after
            its own rationale. student: teachers and --n K (vote shares) record it without this option. Not for
            free-form tasks (svamp) or replay (no scores). Part of the cache key.
        top_logprobs: API teachers with --label-logprobs: alternatives per answer token (1 to 20).
        token_logprobs: Also record the top-K log-probabilities of every generated token (token_topk, for offline
            token-level distillation: train --token-kd-source cache); K 1 to 20 for openai/openai-batch, up to
            100 for hf; 0 = off. At most --max-new-tokens positions; needs --n 1. Part of the cache key when on.
        endpoint: API endpoint: ``chat`` or ``completions``.
        base_url: API base URL (default: $OPENAI_BASE_URL, else OpenAI's).
        api_key: API key (default and preferred: $OPENAI_API_KEY). Never written anywhere.
        timeout: Seconds per request attempt.
        max_attempts: Attempts per request before the example is recorded as failed (Batch API: per API call, before
            the run stops; rerun to resume).
        requests_per_minute: Client-side request-rate limit.
        tokens_per_minute: Client-side token-rate limit.
        prices: USD per million tokens by model, ``{model: [input, output]}`` (adds to the built-in table).
        device: Local model (hf, student) device: auto, cpu, cuda, mps.
        batch_size: Local model (hf, student) prompts per batch.
        dtype: Local model weights: auto (bfloat16 on cuda, else float32), float32, bfloat16, float16.
        prompt_format: Local model prompt: auto (the chat template when the tokenizer has one), chat or raw.
        system_prompt: Local chat models: a system message put before the few-shot turns.
        batch_poll_interval: Batch API: seconds between polls of a running batch.
        batch_max_rounds: Batch API: batches an example may go through (an expired, cancelled or failed batch
            re-queues what did not come back) before it is recorded as failed.
        batch_max_requests: Batch API: requests per batch (the API's limit: 50,000).
        batch_max_bytes: Batch API: bytes per batch input file (the API's limit: 200 MB).
        filter_gold: Drop rationales whose label disagrees with the gold label (counted in the summary).
        retry_failed: Ask again for examples whose cached record is a request failure.
        merge: Instead of generating, merge these caches (a glob such as ``'shards/*.jsonl'``, or comma-separated
            paths) into ``out``.
        summary_json: Also write the summary as JSON to this file.
        progress: Show the progress bar.
        synthesize: Instead of rationales for a split, N new examples (fields, rationale, label): each of N slots
            shows the teacher --shots real train examples (rotated, seeded) and asks for one more, with the
            task's synthesis template (or --prompt). Invalid ones and ones equal or close to a train, valid or test
            example (or to an earlier new one) are dropped, with the reason, in the cache and the summary. Train on
            the cache with `train --rationales OUT` (data-free) or `--synthetic OUT --synthetic-ratio R`.
        shots: Synthesis: real train examples shown per slot.
        synthesis_seed: Synthesis: seed of the order in which train examples are shown (part of each slot's id).
        near_threshold: Synthesis: word-set Jaccard at or above which a new example's input is a near duplicate.
    """
    from ..data import DataError
    from ..options import load_data
    from ..locks import LockHeldError
    from .generator import CacheError, RationaleGenerator, format_summary, merge_caches
    from .openai_batch import BatchAPIError
    from .teachers import GenerationParams, TeacherFatalError, make_teacher

    if merge:
        paths = sorted({path for part in merge.split(",") for path in (glob.glob(part.strip()) or [part.strip()])})
        missing = [path for path in paths if not Path(path).exists()]
        if missing:
            raise SystemExit(f"error: no such cache file: {', '.join(missing)}")
        try:
            stats = merge_caches(paths, out)
        except (CacheError, LockHeldError) as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"merged {stats['files']} caches into {out}: {stats['records']:,} records "
              f"({stats.get('duplicates', 0):,} duplicates dropped)")
        return

    if synthesize is not None:
        wrong = [option for option, value in (("--merge", merge), ("--shard", shard), ("--filter-gold", filter_gold))
                 if value]
        if wrong:
            raise SystemExit(f"error: option {wrong[0]} does not apply to --synthesize")
        if split != "train":
            raise SystemExit("error: option --split: --synthesize shows the teacher train examples (leave --split train)")
    options = {}
    kind = teacher.partition(":")[0]
    if kind in ("openai", "openai-batch"):
        options = dict(base_url=base_url, api_key=api_key, endpoint=endpoint, timeout=timeout,
                       max_attempts=max_attempts, prices={model: tuple(price) for model, price in (prices or {}).items()})
        if kind == "openai":
            options.update(requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute)
        else:
            options.update(poll_interval=batch_poll_interval, max_rounds=batch_max_rounds,
                           max_requests=batch_max_requests, max_bytes=batch_max_bytes, progress=progress)
    elif kind == "hf":
        options = dict(device=device, batch_size=batch_size, dtype=dtype, prompt_format=prompt_format,
                       system_prompt=system_prompt)
    elif kind == "student":
        options = dict(device=device, batch_size=batch_size)
    if synthesize is not None:
        if limit is not None and limit < 1:
            raise SystemExit(f"error: option --limit: must be at least 1, got {limit}")
        count = synthesize if limit is None else min(synthesize, limit)
        return _synthesize(data, teacher, out, options, count, prompt, shots, synthesis_seed, near_threshold,
                           dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed),
                           concurrency, retry_failed, summary_json, progress)
    try:
        loaded = load_data(data, splits=[split])
        examples = loaded.splits[split]
        teacher_obj = make_teacher(teacher, loaded.task.name, split, **options)
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed,
                                  label_logprobs=label_logprobs, top_logprobs=top_logprobs,
                                  token_logprobs=token_logprobs)
        generator = RationaleGenerator(loaded.task, teacher_obj, out, template=prompt, params=params,
                                       concurrency=concurrency, filter_gold=filter_gold, retry_failed=retry_failed,
                                       shard=shard, progress=progress)
        result = generator.run(examples, limit=limit)
    except (DataError, CacheError, ValueError, LockHeldError, BatchAPIError) as exc:
        raise SystemExit(f"error: {exc}") from None
    except TeacherFatalError as exc:
        raise SystemExit(f"error: the teacher refused every request: {exc}") from None
    print(format_summary(result.summary))
    if teacher_obj.kind == "openai-batch":
        print(teacher_obj.summary_line())
    print(f"records: {out}")
    if summary_json:
        Path(summary_json).write_text(json.dumps({"task": loaded.task.name, "split": split, "teacher": teacher_obj.model_id,
                                                  **result.summary.as_dict()}, indent=2))
    summary = result.summary
    if summary.examples and not summary.ok:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in
                            (summary.request_failures + summary.parse_failures).most_common())
        raise SystemExit(f"error: no usable rationale from {teacher}: {summary.examples:,} examples failed"
                         f" ({reasons or f'{summary.filtered:,} dropped by the gold filter'}); see {out}")


def _synthesize(data, teacher, out, options, count, prompt, shots, synthesis_seed, near_threshold, params,
                concurrency, retry_failed, summary_json, progress) -> None:
    """`generate --synthesize N`: new examples into ``out``; their summary, with what was dropped and why."""
    from ..data import DataError
    from ..locks import LockHeldError
    from ..options import load_data
    from .generator import CacheError
    from .openai_batch import BatchAPIError
    from .synthesize import SyntheticGenerator, format_synthesis_summary
    from .teachers import GenerationParams, TeacherFatalError, make_teacher

    try:
        loaded = load_data(data)  # every split: train shows the teacher examples, all three are deduplicated against
        teacher_obj = make_teacher(teacher, loaded.task.name, "train", **options)
        generator = SyntheticGenerator(loaded.task, teacher_obj, out, loaded.splits, template=prompt,
                                       params=GenerationParams(**params), shots=shots, seed=synthesis_seed,
                                       near_threshold=near_threshold, concurrency=concurrency,
                                       retry_failed=retry_failed, progress=progress)
        _, summary = generator.synthesize(count)
    except (DataError, CacheError, ValueError, LockHeldError, BatchAPIError) as exc:
        raise SystemExit(f"error: {exc}") from None
    except TeacherFatalError as exc:
        raise SystemExit(f"error: the teacher refused every request: {exc}") from None
    print(format_synthesis_summary(summary))
    print(f"synthetic examples: {out}")
    if summary_json:
        Path(summary_json).write_text(json.dumps({"task": loaded.task.name, "teacher": teacher_obj.model_id,
                                                  "splits_checked": sorted(loaded.splits), **summary.as_dict()},
                                                 indent=2))
    if not summary.accepted:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in (summary.request_failures + summary.dropped).most_common())
        raise SystemExit(f"error: no synthetic example accepted from {teacher}: {summary.slots:,} slots ({reasons}); "
                         f"see {out}")


if __name__ == "__main__":  # `python -m stepdistill.teacher.command ...`, the command without the rest of the CLI
    from jsonargparse import auto_cli

    auto_cli(generate_command, as_positional=False)
