"""The exercise checker: every check accepts the reference answer, rejects wrong ones
with one sentence, and never lets an exception reach the learner."""

import importlib
import pkgutil
from pathlib import Path

import pytest

import attnlib
import tests
from attnlib.exercises import Verdict, available


def chapter_test_modules():
    names = [m.name for m in pkgutil.iter_modules(tests.__path__)
             if m.name.startswith("test_exercises_ch")]
    return [importlib.import_module(f"tests.{name}") for name in names]


def all_references():
    return {k: v for m in chapter_test_modules() for k, v in m.REFERENCES.items()}


def test_the_instructors_guide_lists_every_exercise_of_the_book():
    root = Path(tests.__path__[0]).parent
    guide = (root / "instructors.md").read_text()
    chapters = {f"ch{int(path.name[:2])}" for path in (root / "chapters").glob("*.ipynb")}
    in_book = [name for name in available() if name.split(".")[0] in chapters]
    assert [name for name in in_book if f"`{name}`" not in guide] == []


def test_every_exercise_has_a_reference_answer_in_the_tests():
    assert sorted(all_references()) == available()


@pytest.mark.parametrize("name", available())
def test_the_reference_answer_passes(name):
    """Each chapter's test file writes its reference answers independently of the checks."""
    verdict = attnlib.check(name, all_references()[name])
    assert verdict, verdict


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("garbage", [None, 42, "x", lambda: None, {"Q": "no"}, [1, 2]])
def test_a_check_never_raises_whatever_the_answer(name, garbage):
    verdict = attnlib.check(name, garbage)
    assert isinstance(verdict, Verdict) and not verdict
    assert "Traceback" not in verdict.message and "\n" not in verdict.message


@pytest.mark.parametrize("empty", [None, "", {}, (), []])
def test_an_empty_answer_is_called_unanswered(empty):
    verdict = attnlib.check("ch1.shapes", empty)
    assert not verdict and verdict.message.startswith("no answer yet")


def test_a_learner_function_that_raises_gets_a_sentence():
    def broken(*args):
        return {}["missing"]

    verdict = attnlib.check("ch1.project_qkv", broken)
    assert not verdict
    assert verdict.message.startswith("your function raised KeyError ('missing') when called "
                                      "with the example sentence")


def test_an_unfinished_stub_is_named_as_such():
    def stub(*args):
        raise NotImplementedError()

    assert "still raises NotImplementedError" in attnlib.check("ch1.project_qkv", stub).message


def test_passing_the_result_instead_of_the_function_is_explained():
    assert "pass the function itself" in attnlib.check("ch1.cross_scores", 3.0).message


def test_unknown_exercise_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'ch1.nope' is not an exercise; known: .*ch1.shapes"):
        attnlib.check("ch1.nope", None)
    with pytest.raises(TypeError, match="name must be a str"):
        attnlib.check(1, None)


def test_verdict_reads_as_one_line():
    verdict = Verdict("ch0.demo", True, "well done.")
    assert repr(verdict) == "✅ Correct (ch0.demo): well done." and verdict
    assert repr(Verdict("ch0.demo", False, "not this.")).startswith("❌ Not yet")
    shown = Verdict("ch0.demo", False, "x < y & z.")._repr_html_()
    assert "Not yet" in shown and "x &lt; y &amp; z." in shown
