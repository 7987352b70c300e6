import math

import numpy as np
import pytest
import torch

import attnlib
from tests.exercise_cases import assert_accepts, assert_rejects


def reference_fit_exponent(sizes, values):
    return float(np.polyfit(np.log2(sizes), np.log2(values), 1)[0])


def reference_window_flops(n, d, window):
    # closed form: the first `window` queries see 1, 2, ..., window keys, the rest `window`
    full = max(n - window, 0)
    ramp = min(n, window)
    return 4 * d * (ramp * (ramp + 1) // 2 + full * window)


REFERENCES = {
    # N^2 terms quadruple, per-token terms double
    "ch5.doubling": {"attention_flops": 4, "projection_flops": 2, "score_bytes": 4,
                     "kv_cache_bytes": 2},
    "ch5.fit_exponent": reference_fit_exponent,
    "ch5.window_flops": reference_window_flops,
}



def test_doubling_feedback_names_every_wrong_factor_without_giving_it_away():
    answer = REFERENCES["ch5.doubling"]
    verdict = attnlib.check("ch5.doubling", dict(answer, kv_cache_bytes=4, score_bytes=2))
    assert not verdict
    assert verdict.message.startswith("2 of the 4 factors are not right yet")
    assert "kv_cache_bytes does not grow by 4 (the cache holds one key" in verdict.message
    assert "score_bytes does not grow by 2 (the matrix holds one entry" in verdict.message
    # the right factors appear nowhere: "by 4" for score_bytes, "by 2" for the cache
    assert "score_bytes does not grow by 4" not in verdict.message
    assert "factor of" not in verdict.message
    assert_rejects("ch5.doubling", dict(answer, attention_flops=2),
                   "1 of the 4 factors is not right yet: attention_flops does not grow by 2")
    assert_rejects("ch5.doubling", {"attention_flops": 4}, "missing 'projection_flops'")
    assert_rejects("ch5.doubling", dict(answer, attention_flops="4"),
                   "attention_flops should be a number")
    assert_rejects("ch5.doubling", [4, 2, 4, 2], "{'attention_flops': ..., ...}")
    assert_accepts("ch5.doubling", {k: float(v) for k, v in answer.items()})


def test_fit_exponent_feedback_spots_typical_mistakes():
    def endpoints(sizes, values):
        return math.log(values[-1] / values[0]) / math.log(sizes[-1] / sizes[0])

    def no_logs(sizes, values):
        return float(np.polyfit(sizes, values, 1)[0])

    def swapped_axes(sizes, values):
        return float(np.polyfit(np.log(values), np.log(sizes), 1)[0])

    assert_rejects("ch5.fit_exponent", endpoints,
                   "you took the slope between the first and last points")
    assert_rejects("ch5.fit_exponent", no_logs, "but yours is")
    assert_rejects("ch5.fit_exponent", swapped_axes,
                   "the exponent is 1.5000, but yours is 0.6667: you fitted log size against "
                   "log value")
    assert_rejects("ch5.fit_exponent", lambda s, v: np.polyfit(np.log(s), np.log(v), 1),
                   "you returned a ndarray of two numbers, the line's slope and intercept "
                   "(as np.polyfit does): return the slope alone, its element [0]")
    assert_rejects("ch5.fit_exponent", lambda s, v: "2",
                   "the exponent should be a number, got '2'")
    assert_accepts("ch5.fit_exponent", lambda s, v: np.polyfit(np.log(s), np.log(v), 1)[:1])
    assert_accepts("ch5.fit_exponent", lambda s, v: torch.tensor(reference_fit_exponent(s, v)))


def visible_pairs_by_brute_force(n, window):
    return sum(1 for i in range(n) for j in range(n) if 0 <= i - j < window)


@pytest.mark.parametrize(
    ("wrong", "phrase"),
    [
        (lambda n, d, w: 4 * n * d * w,
         "for n = 10, d = 4, window = 4 expected 544 FLOPs, got 640: the first queries"),
        (lambda n, d, w: 4 * d * (n * w - w * (w - 1) // 2),
         "for n = 1, d = 8, window = 3 expected 32 FLOPs, got 0: the closed form"),
        (lambda n, d, w: 4 * d * sum(min(i, w) for i in range(n)), "query i sees itself too"),
        (lambda n, d, w: 2 * d * visible_pairs_by_brute_force(n, w), "so 4 d FLOPs, not 2 d"),
        (lambda n, d, w: 8 * n * d * w, "that is what the blocked computation does"),
        (lambda n, d, w: 2 * d * n * (n + 1), "that is full causal attention"),
        (lambda n, d, w: 2 * n * n * d, "that is about full causal attention"),
        (lambda n, d, w: 3 * d * n, "count 4 d FLOPs for each query and each key it can see"),
        (lambda n, d, w: None, "the number of FLOPs should be a number, got None"),
    ],
)
def test_window_flops_feedback_names_the_mistake(wrong, phrase):
    assert_rejects("ch5.window_flops", wrong, phrase)


def test_window_flops_closed_form_with_min_is_accepted():
    def closed_form(n, d, w):
        m = min(n, w)
        return 4 * d * (n * m - m * (m - 1) // 2)

    assert_accepts("ch5.window_flops", closed_form)
    assert all(closed_form(n, 1, w) == 4 * visible_pairs_by_brute_force(n, w)
               for n in range(1, 12) for w in range(1, 15))
