"""Shared assertions for the per-chapter exercise tests."""

import attnlib


def assert_accepts(name, answer):
    verdict = attnlib.check(name, answer)
    assert verdict, verdict


def assert_rejects(name, answer, phrase):
    verdict = attnlib.check(name, answer)
    assert not verdict, f"{name} accepted a wrong answer"
    assert phrase in verdict.message, verdict.message
    assert verdict.message.endswith((".", "?")) and "\n" not in verdict.message
