"""Replay of released teacher outputs (the paper's PaLM files, the authors' datasets/ layout) as a teacher."""

from __future__ import annotations

from pathlib import Path

from .teachers import Reply, Teacher


class ReplayTeacher(Teacher):
    """Released teacher outputs instead of a model: paper reproduction without an API.

    ``folder`` is a ``../shared/data``-style root (``{task}/palm_{split}.jsonl.gz``, joined by id), a task folder
    holding ``palm_{split}.jsonl[.gz]``, or the official ``datasets/`` layout (``{task}/llm/{split}_CoT_{i}.json``
    chunks in index order; output i belongs to example i).
    """

    kind = "replay"
    uses_prompt = False

    def __init__(self, folder: str | Path, task: str, split: str):
        from ..data import _teacher_from_dir  # the data layer's readers for both layouts (errors name file/line)

        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"replay folder not found: {root}")
        self.folder, self.split = root, split
        self.model = f"{root.resolve().name}/{task}"
        outputs, where = None, ""
        for candidate in (root / task, root):
            if candidate.is_dir():
                outputs, where = _teacher_from_dir(candidate, split)
                if outputs is not None:
                    break
        if outputs is None:
            raise ValueError(f"{root}: no teacher outputs for task {task!r} split {split!r} "
                             f"(looked for {task}/palm_{split}.jsonl[.gz] and {task}/llm/{split}_CoT_*.json)")
        self.source = where
        self.outputs = {key: text for key, (_, text) in outputs.items()}
        if where.endswith("_CoT_*.json"):  # chunks hold outputs by position: key them as the examples are keyed
            self.outputs = self._keyed_by_example_id(Path(where).parent.parent, task, split) or self.outputs

    @staticmethod
    def _keyed_by_example_id(folder: Path, task: str, split: str) -> dict[str, str] | None:
        """Outputs by the ids of the official examples file beside the chunks (cos_e's string ids for CQA), or None
        when that file is absent (the chunks alone: ids are positions)."""
        from ..data import load_task_data

        if not (folder / f"{task}_{split}.json").exists():
            return None
        records = load_task_data(task, data_dir=folder, source="official", splits=[split]).splits[split]
        return {record["id"]: record["teacher_output"] for record in records if record["teacher_output"] is not None}

    def __repr__(self) -> str:
        return f"ReplayTeacher({self.source!r}, {len(self.outputs)} outputs)"

    def key_params(self, params):
        return {"split": self.split}  # sampling settings do not change a recording

    async def generate(self, prompts, ids, params):
        replies = []
        for example_id in ids:
            text = self.outputs.get(str(example_id))
            if text is None:
                replies.append(Reply(error="missing_output", error_detail=f"{self.source}: no output with id {example_id}"))
            else:
                replies.append(Reply(outputs=[text], finish_reasons=[None]))
        return replies
