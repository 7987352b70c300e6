import math

import numpy as np
import pytest
import torch

from attnlib import measure, sparse
from tests.exercise_cases import (
    assert_accepts,
    assert_hints_then_reveals,
    assert_refuses_the_library,
    assert_rejects,
    messages_in_a_row,
)


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
    message = messages_in_a_row("ch5.doubling", dict(answer, kv_cache_bytes=4, score_bytes=2),
                                tries=1)[0]
    assert message.startswith("2 of the 4 factors are not right yet")
    assert "kv_cache_bytes does not grow by 4 (the cache holds one key" in message
    assert "score_bytes does not grow by 2 (the matrix holds one entry" in message
    # the right factors appear nowhere: "by 4" for score_bytes, "by 2" for the cache
    assert "score_bytes does not grow by 4" not in message
    assert "factor of" not in message and "the answer" not in message
    assert_rejects("ch5.doubling", dict(answer, attention_flops=2),
                   "1 of the 4 factors is not right yet: attention_flops does not grow by 2")
    assert_rejects("ch5.doubling", {"attention_flops": 4}, "missing 'projection_flops'")
    assert_rejects("ch5.doubling", dict(answer, attention_flops="4"),
                   "attention_flops should be a number")
    assert_rejects("ch5.doubling", [4, 2, 4, 2], "{'attention_flops': ..., ...}")
    assert_accepts("ch5.doubling", {k: float(v) for k, v in answer.items()})


def test_doubling_prints_a_near_miss_with_its_digits_and_reveals_after_two_tries():
    answer = REFERENCES["ch5.doubling"]
    assert_hints_then_reveals("ch5.doubling", dict(answer, attention_flops=4.000001),
                              "attention_flops does not grow by 4.000001",
                              "attention_flops 4, projection_flops 2, score_bytes 4, "
                              "kv_cache_bytes 2")
    assert_rejects("ch5.doubling", dict(answer, score_bytes=math.nan),
                   "score_bytes is NaN, not a number")


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
                   "the exponent is 1.5, but yours is 0.6667: you fitted log size against "
                   "log value")
    assert_rejects("ch5.fit_exponent", lambda s, v: np.polyfit(np.log(s), np.log(v), 1),
                   "you returned a ndarray of two numbers, the line's slope and intercept "
                   "(as np.polyfit does): return the slope alone, its element [0]")
    assert_rejects("ch5.fit_exponent", lambda s, v: "2",
                   "the exponent should be a number, got '2'")
    assert_accepts("ch5.fit_exponent", lambda s, v: np.polyfit(np.log(s), np.log(v), 1)[:1])
    assert_accepts("ch5.fit_exponent", lambda s, v: torch.tensor(reference_fit_exponent(s, v)))


def test_fit_exponent_prints_enough_digits_and_names_nan():
    assert_rejects("ch5.fit_exponent", lambda s, v: reference_fit_exponent(s, v) * (1 + 1e-5),
                   "the exponent is 1.5, but yours is 1.500015")
    assert_rejects("ch5.fit_exponent", lambda s, v: math.nan, "the exponent is NaN")


def test_fit_exponent_refuses_the_library():
    assert_refuses_the_library("ch5.fit_exponent", measure.fit_exponent)


def visible_pairs_by_brute_force(n, window):
    return sum(1 for i in range(n) for j in range(n) if 0 <= i - j < window)


@pytest.mark.parametrize(
    ("wrong", "phrase"),
    [
        (lambda n, d, w: 4 * n * d * w,
         "for n = 10, d = 4, window = 3 expected 432 FLOPs, got 480: the first queries"),
        (lambda n, d, w: 4 * d * visible_pairs_by_brute_force(n, w + 1),
         "for n = 10, d = 4, window = 3 expected 432 FLOPs, got 544: a window of width w holds "
         "w keys, the query itself and the w - 1 before it: you counted w + 1"),
        (lambda n, d, w: 4 * n * d * (w + 1), "a window of width w holds w keys, not w + 1"),
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


def test_window_flops_refuses_the_library():
    assert_refuses_the_library("ch5.window_flops", sparse.window_attention_flops, causal=True)
    assert_rejects("ch5.window_flops",
                   lambda n, d, w: 4 * d * sparse.visible_pairs(n, w, causal=True),
                   "your function calls attnlib's own visible_pairs")
