import re

import pytest

from stepdistill.tasks import get_task
from stepdistill.teacher.prompts import load_template, parse_template, template_for_task

# How each template's demonstrations split into (the query part, the teacher's continuation).
CONTINUATION = {"esnli": "Reasonings:", "anli1": "Answer:", "cqa": "A:", "svamp": "A:"}
EXPECTED_LABELS = {
    "esnli": ["entailment", "contradiction", "neutral", "entailment", "neutral", "contradiction"],
    "anli1": ["entailment", "contradiction", "neutral", "entailment", "neutral", "contradiction"],
    "cqa": ["refrigerator", "go to sleep", "music stand", "bridge", "library"],
    "svamp": ["(48.0 - 29.0)", "(6.0 * 12.0)", "(35.0 + 17.0)", "(84.0 / 7.0)", "(23.0 + 15.0)"],
}


def _demo_example(task_name: str, block: str) -> dict:
    if task_name in ("esnli", "anli1"):
        return {"premise": "", "hypothesis": ""}
    if task_name == "cqa":
        return {"choices": re.findall(r"^\([a-e]\) (.+)$", block, flags=re.M)}
    return {}


@pytest.mark.parametrize("task_name", ["esnli", "anli1", "cqa", "svamp"])
def test_builtin_demonstrations_parse_with_the_task_parser(task_name):
    """Every demonstration, read as a teacher continuation, parses to its intended label with a rationale."""
    task = get_task(task_name)
    template = template_for_task(task)
    blocks = template.body.split("\n\n")
    demos, query = blocks[:-1], blocks[-1]
    assert query.rstrip().endswith(CONTINUATION[task_name]) and "{" in query
    labels = []
    for block in demos:
        continuation = block.split(CONTINUATION[task_name], 1)[1]
        parsed = task.parse_teacher(continuation, _demo_example(task_name, block))
        assert parsed.ok, (block, parsed)
        assert len(parsed.rationale.split()) >= 5
        labels.append(parsed.label)
    assert labels == EXPECTED_LABELS[task_name]
    assert set(template.fields) == set(task.prompt_fields(
        {"premise": "p", "hypothesis": "h", "question": "q", "choices": ["a"] * 5, "Body": "b", "Question": "q"}))


def test_render_and_stop_strings():
    task = get_task("esnli")
    template = load_template("esnli")
    assert template.stop == ("\nPremise:",)
    prompt = template.render(task.prompt_fields({"premise": "A cat sleeps {here}.", "hypothesis": "A cat rests."}))
    assert prompt.endswith("Premise: A cat sleeps {here}.\nHypothesis: A cat rests.\nReasonings:")
    assert not prompt.startswith("#") and prompt.startswith("Premise: A woman in a red coat")
    assert prompt.count("Premise:") == 7
    svamp = template_for_task(get_task("svamp")).render({"question": "Body.\nQuestion?"})
    assert svamp.endswith("Q: Body.\nQuestion?\nA:")


def test_user_template_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text('# my prompt\n# stop: ["\\n###"]\n\nReview: great {{literal}}\nSentiment: positive\n\n'
                    "Review: {text}\nSentiment:\n\n")
    template = load_template(path)
    assert template.stop == ("\n###",)
    assert template.first_line == 4
    assert template.render({"text": "awful"}) == "Review: great {literal}\nSentiment: positive\n\nReview: awful\nSentiment:"
    assert template.hash != load_template("esnli").hash


def test_template_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# comment\nFirst line\nSecond {oops line\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 3: .*literal brace"):
        load_template(path)
    path.write_text("Q: {question}\nA: {answer.x}\n")
    with pytest.raises(ValueError, match=r"line 2: placeholder \{answer.x\} must be a simple field name"):
        load_template(path)
    path.write_text("# stop: \\n\nQ: {question}\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 1: 'stop:' needs a JSON list"):
        load_template(path)
    template = parse_template("intro\nPremise: {premise}\nHypothesis: {hypothesis}", "mine.txt")
    with pytest.raises(ValueError, match=r"mine\.txt: line 3: placeholder \{hypothesis\} has no value; the example provides: premise"):
        template.render({"premise": "x"})
    with pytest.raises(ValueError, match="no built-in prompt template 'nope'; built in: anli1, cqa, esnli, svamp"):
        load_template("nope")
    with pytest.raises(ValueError, match="prompt template not found"):
        load_template(tmp_path / "missing.txt")


def test_builtin_templates_are_package_resources():
    from importlib import resources

    names = sorted(p.name for p in resources.files("stepdistill.prompts").iterdir() if p.name.endswith(".txt"))
    assert names == ["anli1.txt", "cqa.txt", "esnli.txt", "svamp.txt"]
    assert load_template("cqa").source == "stepdistill.prompts/cqa.txt"
