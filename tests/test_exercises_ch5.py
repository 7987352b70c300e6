import math

import numpy as np
import pytest

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


@pytest.mark.parametrize("name", REFERENCES)
def test_reference_answers_pass(name):
    assert_accepts(name, REFERENCES[name])


def test_doubling_feedback_says_which_cost_is_linear():
    answer = REFERENCES["ch5.doubling"]
    assert_rejects("ch5.doubling", dict(answer, kv_cache_bytes=4),
                   "kv_cache_bytes grows by a factor of 2, not 4: the cache holds one key")
    assert_rejects("ch5.doubling", dict(answer, score_bytes=2),
                   "score_bytes grows by a factor of 4, not 2")
    assert_rejects("ch5.doubling", {"attention_flops": 4}, "missing projection_flops")
    assert_rejects("ch5.doubling", dict(answer, attention_flops="4"),
                   "attention_flops should be a number")
    assert_accepts("ch5.doubling", {k: float(v) for k, v in answer.items()})


def test_fit_exponent_feedback_spots_a_two_point_slope():
    def endpoints(sizes, values):
        return math.log(values[-1] / values[0]) / math.log(sizes[-1] / sizes[0])

    def no_logs(sizes, values):
        return float(np.polyfit(sizes, values, 1)[0])

    assert_rejects("ch5.fit_exponent", endpoints,
                   "you took the slope between the first and last points")
    assert_rejects("ch5.fit_exponent", no_logs, "but yours is")
    assert_rejects("ch5.fit_exponent", lambda s, v: np.polyfit(np.log(s), np.log(v), 1),
                   "return the exponent as one number")


def test_window_flops_feedback_spots_the_missing_ramp():
    assert_rejects("ch5.window_flops", lambda n, d, w: 4 * n * d * w,
                   "for n = 10, d = 4, window = 4 expected 544 FLOPs, got 640: the first queries")
    assert_rejects("ch5.window_flops", lambda n, d, w: 2 * d * n * (n + 1),
                   "count 4 d FLOPs for each query")
