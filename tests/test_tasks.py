import pytest

from stepdistill import evaluate_arithmetic, get_task, values_equal
from stepdistill.tasks import SpecTask, Task, task_names


def test_builtin_tasks_are_registered():
    assert {"anli1", "cqa", "esnli", "svamp"} <= set(task_names())  # the demo registers its own task too


def test_esnli_parser_follows_the_authors_rule():
    task = get_task("esnli")
    parsed = task.parse_teacher("A man is not a woman.\nAnswer: contradiction\n\nPremise: A man")
    assert (parsed.rationale, parsed.label, parsed.error) == ("A man is not a woman.", "contradiction", None)
    cut = task.parse_teacher("Dogs run.\nAnswer: entailment\n\nPre")  # answer cut before the next "Premise"
    assert (cut.label, cut.error) == ("entailment\n\nPre", "unknown_label")
    assert task.parse_teacher("No answer marker here").error == "no_answer"
    assert task.parse_teacher("\nAnswer: neutral").error == "empty_rationale"


def test_anli_parser_drops_the_final_period():
    task = get_task("anli1")
    parsed = task.parse_teacher("The premise says 4 routes. So the answer is entailment.\n\nPremise: x\nHypothesis: y")
    assert (parsed.rationale, parsed.label, parsed.ok) == ("The premise says 4 routes.", "entailment", True)
    assert task.parse_teacher("It is unclear.\n\nPremise: x").error == "no_answer"


def test_cqa_label_is_the_choice_text():
    task = get_task("cqa")
    example = {"question": "Where do you keep milk?", "choices": ["fridge", "oven", "car", "bed", "roof"], "answer": "fridge"}
    assert task.format_input(example).splitlines() == [
        "Where do you keep milk?", "Answer Choices:", "(a) fridge", "(b) oven", "(c) car", "(d) bed", "(e) roof"]
    parsed = task.parse_teacher("Milk must stay cold. So the answer is (a) fridge.\n\nQ: next", example)
    assert (parsed.rationale, parsed.label, parsed.error) == ("Milk must stay cold.", "fridge", None)
    assert task.parse_teacher("So the answer is (b) freezer.", example).error == "unknown_label"


def test_svamp_compares_equations_by_value():
    task = get_task("svamp")
    parsed = task.parse_teacher("She had 8 and ate 5, 8 - 5 = 3. The answer is ( 8.0 - 5.0 ).\n\nQ: next")
    assert (parsed.label, parsed.error) == ("( 8.0 - 5.0 )", None)
    assert task.is_correct("(8 - 5)", "( 6.0 / 2.0 )")
    assert not task.is_correct("(8 + 5)", "( 8.0 - 5.0 )")
    assert not task.is_correct("__import__('os')", "( 8.0 - 5.0 )")


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "x + 1", "(1).real", "[1, 2]", "2 ** 10000", "1 / 0", ""])
def test_arithmetic_evaluator_rejects_anything_but_arithmetic(text):
    with pytest.raises(ValueError):
        evaluate_arithmetic(text)


def test_arithmetic_evaluator_values():
    assert evaluate_arithmetic("( 3.0 + 4.0 ) * 2 - 1 / 4") == 13.75
    assert evaluate_arithmetic("-2 ** 2") == -4.0
    assert values_equal("0.1 + 0.2", "0.3")


def test_labels_are_matched_after_normalisation():
    task = get_task("esnli")
    assert task.canonical_label(" Neutral. ") == "neutral"
    assert task.canonical_label("maybe") is None
    assert task.is_correct("ENTAILMENT", "entailment")


def test_spec_task_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="missing field\\(s\\) input_template"):
        SpecTask({"name": "x", "labels": ["a"]}, source="spec.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",\n "labels": [}')
    with pytest.raises(ValueError, match="bad.json: line 2: invalid JSON"):
        get_task(str(bad))


def test_python_class_task_from_a_user_file(tmp_path):
    module = tmp_path / "my_tasks.py"
    module.write_text(
        "from stepdistill import Task\n"
        "class Topic(Task):\n"
        "    name = 'topic'\n"
        "    labels = ('sport', 'politics')\n"
        "    input_fields = ('text',)\n"
        "    def format_input(self, example):\n"
        "        return 'text: ' + example['text']\n"
    )
    task = get_task(f"{module}:Topic")
    assert isinstance(task, Task) and task.name == "topic"
    assert task.format_input({"text": "goal!"}) == "text: goal!"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
