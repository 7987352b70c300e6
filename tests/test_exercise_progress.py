"""What a kernel remembers of the checks: wrong tries per exercise (`attempts`) and the
chapter's list of exercises passed or not (`progress`)."""

import re
from pathlib import Path

import nbformat
import pytest

import attnlib
from attnlib import exercises
from attnlib.exercises import Progress, Wrong, attempts, available, progress

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"


@pytest.fixture(autouse=True)
def fresh_kernel(monkeypatch):
    """Each test starts as a new kernel would: nothing tried yet."""
    monkeypatch.setattr(exercises, "_RECORDS", {})


def right_visible_pairs():
    return {"causal": 55, "sliding_window": 27}


def test_attempts_count_the_wrong_answers_only():
    assert attempts("ch3.visible_pairs") == 0
    attnlib.check("ch3.visible_pairs", {"causal": 100, "sliding_window": 27})
    attnlib.check("ch3.visible_pairs", "fifty-five")  # a form the check cannot use
    assert attempts("ch3.visible_pairs") == 2
    assert attnlib.check("ch3.visible_pairs", right_visible_pairs())
    assert attempts("ch3.visible_pairs") == 2
    assert attempts("ch3.causal_attention") == 0  # other exercises are counted apart


@pytest.mark.parametrize("empty", [None, "", {}, ()])
def test_an_empty_answer_is_not_a_try(empty):
    attnlib.check("ch1.shapes", empty)
    assert attempts("ch1.shapes") == 0
    assert "not tried yet" in str(progress("ch1"))


def test_a_check_sees_the_wrong_tries_before_the_answer_it_checks(monkeypatch):
    """So that a prediction check can hint on the first wrong try and reveal later."""
    seen = []

    def hint_then_reveal(answer):
        seen.append(attempts("ch3.visible_pairs"))
        raise Wrong("a hint." if seen[-1] == 0 else "the answer.")

    monkeypatch.setitem(exercises._CHECKS, "ch3.visible_pairs", hint_then_reveal)
    messages = [attnlib.check("ch3.visible_pairs", {"causal": n}).message for n in (1, 2, 3)]
    assert seen == [0, 1, 2]
    assert messages == ["a hint.", "the answer.", "the answer."]


def test_attempts_refuses_what_is_not_an_exercise():
    with pytest.raises(ValueError, match=r"'ch3.nope' is not an exercise; known: .*ch3\."):
        attempts("ch3.nope")
    with pytest.raises(TypeError, match="name must be a str"):
        attempts(3)


def check_calls(path):
    """The exercise names of a chapter's check cells, in the notebook's order."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                     if c.cell_type == "code")
    return re.findall(r'attnlib\.check\("([^"]+)"', code)


@pytest.mark.parametrize("path", sorted(CHAPTERS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_progress_lists_the_chapter_exercises_in_the_notebook_order(path):
    names = check_calls(path)
    chapter = names[0].split(".")[0]
    listed = progress(chapter)
    assert [e.name for e in listed.exercises] == names
    assert [e.name for e in progress(int(chapter[2:])).exercises] == names
    assert sorted(names) == [n for n in available() if n.startswith(f"{chapter}.")]


def test_progress_says_what_passed_and_what_did_not():
    attnlib.check("ch3.visible_pairs", {"causal": 100, "sliding_window": 27})
    attnlib.check("ch3.visible_pairs", right_visible_pairs())
    attnlib.check("ch3.causal_attention", lambda q, k, v: v)
    attnlib.check("ch3.causal_attention", lambda q, k, v: q)
    now = progress("ch3")
    assert isinstance(now, Progress) and now.passed == 1
    assert [(e.name, e.passed, e.wrong) for e in now.exercises] == [
        ("ch3.visible_pairs", True, 1), ("ch3.causal_attention", False, 2),
        ("ch3.decode_step", False, 0)]
    assert str(now) == repr(now) == "\n".join([
        "Chapter 3: 1 of 3 exercises passed in this session",
        "  ✅ ch3.visible_pairs: passed",
        "  ❌ ch3.causal_attention: not yet (2 wrong tries)",
        "  ⬜ ch3.decode_step: not tried yet",
    ])
    shown = now._repr_html_()
    assert shown.count("<li>") == 3 and "1 of 3 exercises passed" in shown


def test_progress_escapes_its_html():
    line = exercises.ExerciseProgress("ch9.<b>&", passed=False, wrong=1)
    shown = Progress("ch9", (line,))._repr_html_()
    assert "ch9.&lt;b&gt;&amp;" in shown and "<b>" not in shown
    assert "(1 wrong try)" in str(line)


def test_progress_refuses_an_unknown_chapter():
    with pytest.raises(ValueError, match=r"chapter 'ch99' has no exercises; chapters with "
                                         r"exercises: ch1, ch2"):
        progress("ch99")
    with pytest.raises(TypeError, match="chapter must be a str such as 'ch3' or an int"):
        progress(3.0)
    with pytest.raises(TypeError, match="got bool"):
        progress(True)


def function_exercises():
    from tests.test_exercises import all_references

    return [name for name, answer in sorted(all_references().items()) if callable(answer)]


@pytest.mark.parametrize("name", function_exercises())
def test_a_stub_that_raises_not_implemented_is_not_a_try(name):
    """A student copy's `raise NotImplementedError()`: named in the feedback, not counted."""
    def stub(*args):
        raise NotImplementedError()

    verdict = attnlib.check(name, stub)
    assert not verdict and "still raises NotImplementedError" in verdict.message
    assert attempts(name) == 0
    assert attnlib.check(name, lambda *args: 0) is not None and attempts(name) == 1
