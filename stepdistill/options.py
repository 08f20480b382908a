"""Options every command shares, defined once: where the data comes from, how train is subsampled, which
rationale caches replace the data's own teacher outputs. The CLI derives its options from these dataclasses
(and from :class:`stepdistill.student.config.TrainConfig`), so a new field appears in every command at once.

Light imports only: ``stepdistill --help`` must not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Source = Literal["local", "official", "hub", "jsonl", "csv"]


@dataclass
class DataOptions:
    """Where a task's examples and teacher outputs come from.

    Attributes:
        task: Required where data is loaded. Registered task name (esnli, anli1, cqa, svamp, kinds-demo), a task spec .json or file.py:Class.
        data_dir: Data folder (sources local/official). Default: $STEPDISTILL_DATA_DIR, else ../shared/data.
        source: local (../shared/data layout), official (distilling-step-by-step datasets/), hub
            (datasets.load_dataset), jsonl or csv (your own files, see --files).
        files: For jsonl/csv: split -> file, e.g. {train: train.jsonl, test: test.jsonl}.
        fields: For jsonl/csv: task field -> column name in the files, e.g. {premise: sentence1}.
        teacher_field: For jsonl/csv: the column holding raw teacher output, if any.
        teacher_dir: For the hub source: folder with teacher outputs (palm_{split}.jsonl.gz or llm/ chunks).
        hub_name: For the hub source: dataset name or path for datasets.load_dataset.
        carve_valid: For a task without a valid split: carve this fraction of train (or this many examples) as
            valid, seed 0, disjoint from every training subset; null: do not carve.
    """

    task: str | None = None
    data_dir: str | None = None
    source: Source = "local"
    files: dict[str, str] | None = None
    fields: dict[str, str] | None = None
    teacher_field: str | None = None
    teacher_dir: str | None = None
    hub_name: str | None = None
    carve_valid: float | None = 0.1

    def source_options(self) -> dict[str, Any]:
        """The keyword options of :func:`stepdistill.data.load_task_data` that are set."""
        options = dict(files=self.files, fields=self.fields, teacher_field=self.teacher_field,
                       teacher_dir=self.teacher_dir, hub_name=self.hub_name)
        return {key: value for key, value in options.items() if value}


@dataclass
class SubsetOptions:
    """A nested subsample of the train split (the same examples on every machine).

    Attributes:
        fraction: Train on this fraction of the FULL public train split (e.g. 0.001 for 0.1% of e-SNLI's 549,367).
        count: Or on this many training examples.
        data_seed: Seed of the subset (separate from the training seed).
        stratify: Keep label proportions in the subset.
        synthetic: Add synthetic examples from this `generate --synthesize` cache (a path or glob) to the real
            training examples: --synthetic-ratio of them per real example, chosen by --data-seed.
        synthetic_ratio: Synthetic examples per real training example, with --synthetic (0.5: one per two).
    """

    fraction: float | None = None
    count: int | None = None
    data_seed: int = 0
    stratify: bool = False
    synthetic: str | None = None
    synthetic_ratio: float = 1.0

    def __post_init__(self):
        if self.fraction is not None and self.count is not None:
            raise ValueError("option --fraction and --count: give at most one")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"option --fraction: must be in (0, 1], got {self.fraction}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"option --count: must be at least 1, got {self.count}")
        if not self.synthetic_ratio > 0:
            raise ValueError(f"option --synthetic-ratio: must be positive, got {self.synthetic_ratio}")

    @property
    def active(self) -> bool:
        return self.fraction is not None or self.count is not None


def load_data(options: DataOptions, splits: list[str] | tuple[str, ...] | None = None,
              rationales: str | list[str] | None = None):
    """The task's splits from ``options``; with ``rationales`` (cache paths or globs) the train split's teacher
    outputs come from those caches instead (joined by id; examples a cache lacks are marked ``missing``).

    Caches of synthetic examples (`generate --synthesize`) replace the train split ("data-free": valid and test
    stay the task's own)."""
    from .data import DataError, load_task_data, split_report
    from .rationales import attach_rationales, load_rationale_caches, synthetic_caches, synthetic_records

    if not options.task:
        raise ValueError("option --task is required (a task name, a spec .json or file.py:Class)")
    data = load_task_data(options.task, data_dir=options.data_dir, source=options.source, splits=splits,
                          carve_valid=options.carve_valid, **options.source_options())
    if rationales and "train" in data.splits:
        if synthetic_caches(rationales):
            data.splits["train"] = synthetic_records(data.task, rationales)
            if not data.splits["train"]:
                raise DataError(f"option --rationales: {rationales}: no accepted synthetic example")
        else:
            data.splits["train"] = attach_rationales(data.splits["train"], load_rationale_caches(rationales))
        data.report["train"] = split_report(data.task, data.splits["train"])
    return data


def train_subset(data, subset: SubsetOptions) -> list[dict]:
    """The train records ``subset`` selects (all when it selects none), then, with ``subset.synthetic``, the chosen
    synthetic examples; asking for more than exist is an error."""
    real = _real_subset(data, subset, data.splits["train"])
    return real + _synthetic_subset(data, subset, real) if subset.synthetic else real


def _real_subset(data, subset: SubsetOptions, records: list[dict]) -> list[dict]:
    from .data import DataError, subsample

    if not subset.active:
        return records
    full = data.train_full_size if subset.fraction is not None else None
    wanted = round(subset.fraction * (full or len(records))) if subset.fraction is not None else subset.count
    if wanted > len(records) or wanted < 1:
        asked = f"--fraction {subset.fraction:g} ({wanted:,} of {full or len(records):,})" \
            if subset.fraction is not None else f"--count {subset.count:,}"
        largest = f"; largest --fraction: {len(records) / full:.4g}" if full else ""
        raise DataError(f"option {asked}: only {len(records):,} training examples exist{largest}")
    return subsample(records, fraction=subset.fraction, count=subset.count, seed=subset.data_seed,
                     full_size=full, stratify=subset.stratify)


def _synthetic_subset(data, subset: SubsetOptions, real: list[dict]) -> list[dict]:
    from .rationales import synthetic_records

    pool = synthetic_records(data.task, subset.synthetic, option="--synthetic")
    return choose_synthetic(pool, subset.synthetic_ratio, real, subset.data_seed, subset.synthetic)


def choose_synthetic(pool: list[dict], ratio: float, real: list[dict], seed: int, source: str) -> list[dict]:
    """``ratio`` synthetic examples of ``pool`` per real one, chosen by ``seed`` (nested: a smaller choice is inside
    a larger one); more than the pool holds is an error."""
    from .data import DataError, _rank

    wanted = round(ratio * len(real))
    if wanted > len(pool):
        raise DataError(f"option --synthetic-ratio {ratio:g}: {wanted:,} synthetic examples for {len(real):,} real "
                        f"ones, but {source} holds {len(pool):,} accepted ones")
    clash = {str(r["id"]) for r in real} & {r["id"] for r in pool}
    if clash:
        raise DataError(f"option --synthetic: synthetic example id {sorted(clash)[0]} is also a real example's id")
    return sorted(pool, key=lambda r: _rank(seed, r["id"], salt="synthetic"))[:wanted]
