"""Shared assertions for the per-chapter exercise tests."""

import functools

import pytest

import attnlib
from attnlib import exercises


def _first_try(name, answer):
    """The verdict on `answer` as a first try: no wrong tries recorded before it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exercises, "attempts", lambda name: 0)
        return attnlib.check(name, answer)


def assert_accepts(name, answer):
    verdict = attnlib.check(name, answer)
    assert verdict, verdict


def assert_rejects(name, answer, phrase):
    """`answer` is wrong, and the feedback to a first try at it holds `phrase`."""
    verdict = _first_try(name, answer)
    assert not verdict, f"{name} accepted a wrong answer"
    assert phrase in verdict.message, verdict.message
    assert verdict.message.endswith((".", "?")) and "\n" not in verdict.message


def messages_in_a_row(name, answer, tries=exercises.REVEAL_AFTER + 1):
    """The feedback to `answer` given `tries` times in a row in a fresh kernel (an empty
    record of attempts)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exercises, "_RECORDS", {})
        return [attnlib.check(name, answer).message for _ in range(tries)]


def assert_hints_then_reveals(name, wrong, hint, answer):
    """A wrong prediction gets `hint` and not `answer` (a phrase of the revelation) on its
    first REVEAL_AFTER tries, then both."""
    messages = messages_in_a_row(name, wrong)
    for message in messages[:-1]:
        assert hint in message and answer not in message and "the answer" not in message, \
            message
    assert hint in messages[-1] and f"the answer: {answer}" in messages[-1], messages[-1]


def assert_refuses_the_library(name, library_fn, **options):
    """The check refuses `library_fn` passed in, wrapped in functools.partial (with
    `options`), and called from the learner's own function."""
    def calls_it(*inputs):
        return library_fn(*inputs, **options)

    assert_rejects(name, functools.partial(library_fn, **options), "you passed")
    assert_rejects(name, calls_it, "your function calls")
    if not options:
        assert_rejects(name, library_fn, "you passed")
