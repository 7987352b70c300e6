"""The exercise checker: every check accepts the reference answer, rejects wrong ones
with one sentence, and never lets an exception reach the learner."""

import functools
import importlib
import math
import pkgutil
import sys
import types
from pathlib import Path

import pytest
import torch

import attnlib
import tests
from attnlib import exercises
from attnlib.exercises import Verdict, Wrong, available

tests_module = sys.modules[__name__]


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


# --- the helpers for writing checks -------------------------------------------------------


def test_two_different_numbers_never_print_alike():
    assert exercises.texts_apart(1000.69, 1000) == ("1000.69", "1000")
    assert exercises.texts_apart(1000.69, 1000.2) == ("1000.69", "1000.2")
    assert exercises.texts_apart(0.5, 0.50001) == ("0.5", "0.50001")
    assert exercises.texts_apart(0.123456, 9.0) == ("0.1235", "9")
    assert exercises.texts_apart(float("nan"), 1.0) == ("nan", "1")
    pairs = [(1 + 10.0**-e, 1.0) for e in range(1, 15)] + [(3e-9, 3.0001e-9), (-2.5, -2.4999)]
    for a, b in pairs:
        text_a, text_b = exercises.texts_apart(a, b)
        assert text_a != text_b and float(text_a) != float(text_b)
    assert exercises.number_text(4.0) == "4" and exercises.number_text(4.000001) == "4.000001"


def test_same_tensor_names_nan_and_prints_digits_that_differ():
    expected = torch.tensor([1.0, 1000.69])
    with pytest.raises(Wrong, match=r"at index \(1,\) expected 1000.69, got 1000\.$"):
        exercises.same_tensor(torch.tensor([1.0, 1000.0]), expected, "x")
    with pytest.raises(Wrong, match=r"x has NaN at index \(0,\), where 1 was expected \(NaN "
                                    r"comes from 0 / 0, inf - inf .*\): a hint\.$"):
        exercises.same_tensor(torch.tensor([math.nan, 1000.69]), expected, "x", hint="a hint")


def test_a_nan_answer_is_named_as_such():
    with pytest.raises(Wrong, match="the exponent is NaN, not a number"):
        exercises.number(float("nan"), "the exponent")
    with pytest.raises(Wrong, match="the count is NaN"):
        exercises.whole_number(torch.tensor(math.nan), "the count")


def test_float_tolerance_grows_with_the_size_of_the_inputs():
    eps = torch.finfo(torch.float32).eps
    assert exercises.float_tolerance(torch.float32) == 8 * eps
    assert exercises.float_tolerance(torch.float32, 1000.0) == 8000 * eps
    assert exercises.float_tolerance(torch.float64, 1000.0) < 1e-11


def library_like(x, scale=1.0):
    return x * scale


def test_refuse_library_sees_through_wrappers_and_calls():
    @functools.wraps(library_like)
    def decorated(*args):
        return library_like(*args)

    class Owner:
        def method(self, x):
            return x

    refused = [library_like, functools.partial(library_like, scale=2.0),
               functools.partial(functools.partial(library_like), 1.0), decorated,
               lambda x: library_like(x), lambda x: tests_module.library_like(x),
               types.MethodType(library_like, 3.0)]
    for answer in refused:
        with pytest.raises(Wrong, match="PyTorch's own library_like|attnlib's own"):
            exercises.refuse_library(answer, (library_like,), "by hand")
    for own in (lambda x: x * 1.0, Owner().method, 42, None):
        exercises.refuse_library(own, (library_like,), "by hand")  # raises nothing


def test_refuse_library_names_attnlibs_functions_and_pytorchs():
    with pytest.raises(Wrong, match=r"^you passed attnlib's own merge_heads: write your own, "
                                    r"with transpose and reshape\.$"):
        exercises.refuse_library(attnlib.multihead.merge_heads,
                                 (attnlib.multihead.merge_heads,), "with transpose and reshape")
    with pytest.raises(Wrong, match=r"^your function calls PyTorch's own softmax: the exercise "
                                    r"asks you to write it yourself, by hand\.$"):
        exercises.refuse_library(lambda x: torch.nn.functional.softmax(x, -1),
                                 (torch.nn.functional.softmax,), "by hand")


# --- predictions: a hint first, the answer later --------------------------------------------


def test_wrong_prediction_hints_until_the_reveal_then_gives_the_answer(monkeypatch):
    for tries in range(exercises.REVEAL_AFTER + 2):
        monkeypatch.setattr(exercises, "attempts", lambda name, tries=tries: tries)
        with pytest.raises(Wrong) as wrong:
            exercises.wrong_prediction("ch0.demo", "look again", "42")
        revealed = tries >= exercises.REVEAL_AFTER
        assert str(wrong.value) == ("look again; the answer: 42." if revealed else "look again.")


#: A wrong answer to every prediction exercise.
WRONG_PREDICTIONS = {
    "ch1.shapes": {"Q": (5, 3), "K": (5, 3), "V": (5, 4), "S": (5, 3)},
    "ch1.bank_money": "deposited",
    "ch2.predict_std": (256, 1),
    "ch3.visible_pairs": {"causal": 50, "sliding_window": 27},
    "ch4.head_targets": {"previous token": "cash", "topic": "cash"},
    "ch5.doubling": {"attention_flops": 2, "projection_flops": 2, "score_bytes": 4,
                     "kv_cache_bytes": 2},
    "ch6.causal_blocks": {"computed": 64, "skipped": 64},
    "ch8.recall_capacity": 4096,
}


@pytest.mark.parametrize("name", sorted(WRONG_PREDICTIONS))
def test_every_prediction_reveals_its_answer_only_after_two_wrong_tries(name, monkeypatch):
    wrong = WRONG_PREDICTIONS[name]
    for tries in range(exercises.REVEAL_AFTER):
        monkeypatch.setattr(exercises, "attempts", lambda name, n=tries: n, raising=False)
        assert "the answer" not in attnlib.check(name, wrong).message
    monkeypatch.setattr(exercises, "attempts", lambda name: exercises.REVEAL_AFTER)
    verdict = attnlib.check(name, wrong)
    assert not verdict and "; the answer: " in verdict.message
    assert attnlib.check(name, all_references()[name])
