import json

import pytest

from stepdistill import evaluate_arithmetic, get_task, values_equal
from stepdistill.tasks import SpecTask, Task, TeacherParse, task_names, task_reference


def test_builtin_tasks_are_registered():
    assert {"anli1", "cqa", "esnli", "svamp"} <= set(task_names())  # the demo registers its own task too


def test_esnli_parser_follows_the_authors_rule():
    task = get_task("esnli")
    parsed = task.parse_teacher("A man is not a woman.\nAnswer: contradiction\n\nPremise: A man")
    assert (parsed.rationale, parsed.label, parsed.error) == ("A man is not a woman.", "contradiction", None)
    cut = task.parse_teacher("Dogs run.\nAnswer: entailment\n\nPre")  # answer cut before the next "Premise"
    # an invalid label is never a label: None, with the parsed text kept for reports
    assert (cut.label, cut.raw_label, cut.error) == (None, "entailment\n\nPre", "unknown_label")
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
    unknown = task.parse_teacher("So the answer is (b) freezer.", example)
    assert (unknown.label, unknown.raw_label, unknown.error) == (None, "freezer", "unknown_label")
    # the authors' rule: the text after the first "(x)" up to the next one; no marker is no answer
    two = task.parse_teacher("Cold. So the answer is (a) fridge (b) oven", example)
    assert (two.label, two.raw_label, two.error) == ("fridge", "fridge", None)
    assert task.parse_teacher("Cold. So the answer is fridge.", example).error == "no_answer"
    assert task.parse_teacher("Cold.", example).error == "no_answer"


def test_svamp_compares_equations_by_value():
    task = get_task("svamp")
    parsed = task.parse_teacher("She had 8 and ate 5, 8 - 5 = 3. The answer is ( 8.0 - 5.0 ).\n\nQ: next")
    assert (parsed.label, parsed.error) == ("( 8.0 - 5.0 )", None)
    assert task.parse_teacher("8 - 5 = 3. The answer is 3.").error == "no_answer"  # the authors need parentheses
    bad = task.parse_teacher("Huge. The answer is (9 ** 99).")
    assert (bad.label, bad.raw_label, bad.error) == (None, "(9 ** 99)", "unknown_label")
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


def test_svamp_reads_the_released_and_the_raw_form():
    task = get_task("svamp")
    released = task.prepare_example({"input": "Ann has 8 pens. She gives 5 away.\nHow many are left?", "label": "( 8.0 - 5.0 )"})
    raw = task.prepare_example({"ID": "chal-7", "Body": "Ann has 8 pens. She gives 5 away.", "Question": "How many are left?",
                                "Equation": "( 8.0 - 5.0 )", "Answer": 3.0})
    assert released == {"Body": "Ann has 8 pens. She gives 5 away.", "Question": "How many are left?", "Equation": "( 8.0 - 5.0 )"}
    assert raw["id"] == "chal-7" and raw["Equation"] == "( 8.0 - 5.0 )"
    assert task.format_input(released) == task.format_input(raw) == "Ann has 8 pens. She gives 5 away.\nHow many are left?"
    with pytest.raises(ValueError, match="field 'input': expected the body and the question separated by a newline"):
        task.prepare_example({"input": "one line", "label": "(1)"})


def test_an_invalid_label_from_a_users_parser_is_dropped_too():
    parsed = TeacherParse("Because.", "maybe", "unknown_label")
    assert (parsed.label, parsed.raw_label) == (None, "maybe")
    assert TeacherParse("Because.", "yes").raw_label == "yes"


# -- task references (rebuilding a task from a run folder) -----------------------------------------------------

def roundtrip(task):
    reference = task_reference(task)
    rebuilt = get_task(json.loads(json.dumps(reference)))  # through JSON, as stored in a run folder
    return reference, rebuilt


def test_reference_of_a_registered_task():
    reference, rebuilt = roundtrip(get_task("cqa"))
    assert reference == {"name": "cqa"} and type(rebuilt) is type(get_task("cqa"))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task({"name": "nope"})
    with pytest.raises(ValueError, match="expected a field 'name', 'spec' or 'class'"):
        get_task({"task": "cqa"})


def test_reference_of_a_spec_task(tmp_path, monkeypatch):
    spec = {"name": "sentiment", "input_template": "review: {text}", "labels": ["positive", "negative"], "prompt": "p.txt"}
    (tmp_path / "sentiment.json").write_text(json.dumps(spec))
    monkeypatch.chdir(tmp_path)
    reference, rebuilt = roundtrip(get_task("sentiment.json"))
    assert reference == {"spec": spec, "source": str(tmp_path / "sentiment.json")}
    monkeypatch.chdir("/")
    assert isinstance(rebuilt, SpecTask) and rebuilt.spec == spec and rebuilt.labels == ("positive", "negative")
    assert rebuilt.format_input({"text": "fine"}) == "review: fine"
    assert get_task(reference).prompt_path == tmp_path / "p.txt"


def test_reference_of_a_class_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "topic_tasks.py").write_text(
        "from stepdistill import Task\n"
        "class Topic(Task):\n"
        "    name = 'topic'\n"
        "    labels = ('sport', 'politics')\n"
        "    def format_input(self, example):\n"
        "        return 'text: ' + example['text']\n"
    )
    monkeypatch.chdir(tmp_path)
    reference, rebuilt = roundtrip(get_task("topic_tasks.py:Topic"))
    assert reference == {"class": f"{tmp_path / 'topic_tasks.py'}:Topic"}
    assert rebuilt.name == "topic" and rebuilt.format_input({"text": "goal"}) == "text: goal"
    monkeypatch.syspath_prepend(str(tmp_path))
    reference, rebuilt = roundtrip(get_task("topic_tasks:Topic"))
    assert reference == {"class": "topic_tasks:Topic"} and rebuilt.labels == ("sport", "politics")
    # a class built in code (not through get_task) is found by its module
    import topic_tasks

    assert task_reference(topic_tasks.Topic()) == {"class": "topic_tasks:Topic"}


def test_reference_of_a_registered_user_task_carries_its_class():
    from stepdistill.demo import KindsDemo

    reference, rebuilt = roundtrip(KindsDemo())
    assert reference == {"name": "kinds-demo", "class": "stepdistill.demo:KindsDemo"}
    assert type(rebuilt) is KindsDemo


def test_a_run_folder_from_before_the_demo_task_was_renamed_still_resolves():
    from stepdistill.demo import KindsDemo

    assert type(get_task({"name": "arith-demo", "class": "stepdistill.demo:ArithDemo"})) is KindsDemo
