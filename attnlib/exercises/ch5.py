"""Checks for chapter 5: the quadratic cost of attention."""

import math
import random

import torch

from attnlib import cost, measure, sparse
from attnlib.exercises import (
    Wrong,
    call,
    exercise,
    number,
    number_text,
    refuse_library,
    require_keys,
    texts_apart,
    whole_number,
    wrong_prediction,
)

#: The setting of the doubling prediction: one float32 head of width 64, N from 4096 to 8192.
DOUBLING_SETTING = {"n": 4096, "d": 64, "d_model": 64, "dtype": torch.float32}

_DOUBLING_HINTS = {
    "attention_flops": "Q K^T and A V take one dot product per (query, key) pair: how many "
                       "pairs does twice the text have?",
    "projection_flops": "each token is projected on its own: how many projections does twice "
                        "the text need?",
    "score_bytes": "the matrix holds one entry per (query, key) pair",
    "kv_cache_bytes": "the cache holds one key and one value per token",
}


def doubling_factors(n, d, d_model, dtype):
    """How much each cost grows when N doubles, from the library's formulas."""
    def costs(m):
        return {"attention_flops": cost.attention_flops(m, d),
                "projection_flops": cost.projection_flops(m, d_model),
                "score_bytes": cost.score_matrix_bytes(m, dtype=dtype),
                "kv_cache_bytes": cost.kv_cache_bytes(m, d, dtype=dtype)}

    before, after = costs(n), costs(2 * n)
    return {key: after[key] / before[key] for key in before}


@exercise("ch5.doubling")
def check_doubling(answer):
    expected = doubling_factors(**DOUBLING_SETTING)
    require_keys(answer, list(expected), "{'attention_flops': ..., ...} (one factor per key)")
    answer = {key: number(answer[key], key) for key in expected}
    wrong = [f"{key} does not grow by {number_text(answer[key])} ({_DOUBLING_HINTS[key]})"
             for key, factor in expected.items() if not math.isclose(answer[key], factor)]
    if wrong:
        verb = "is" if len(wrong) == 1 else "are"
        wrong_prediction("ch5.doubling", f"{len(wrong)} of the {len(expected)} factors {verb} "
                                         f"not right yet: {'; '.join(wrong)}",
                         ", ".join(f"{key} {factor:g}" for key, factor in expected.items()))
    return ("twice the tokens: 4 times the attention work and score memory, "
            "but only twice the projections and the KV cache.")


def _noisy_power_law(seed):
    rng = random.Random(seed)
    sizes = [256 * 2**i for i in range(6)]
    values = [1e-9 * n**2 * rng.uniform(0.7, 1.4) for n in sizes]
    return sizes, values


@exercise("ch5.fit_exponent")
def check_fit_exponent(my_fit_exponent):
    refuse_library(my_fit_exponent, (measure.fit_exponent,),
                   "with logarithms and a least-squares line")
    exact_sizes = [100, 300, 1000, 3000]
    cases = [(f"sizes {exact_sizes} and values 5 * n**1.5", exact_sizes,
              [5 * n**1.5 for n in exact_sizes])]
    for seed in (1, 2):
        sizes, values = _noisy_power_law(seed)
        cases.append((f"six noisy timings that grow about like N^2 (seed {seed})", sizes, values))
    for description, sizes, values in cases:
        got = call(my_fit_exponent, list(sizes), list(values), called_with=description)
        expected = measure.fit_exponent(sizes, values)
        kind = type(got).__name__
        if hasattr(got, "tolist") and hasattr(got, "shape"):  # a torch tensor or numpy array
            got = got.tolist()
        if isinstance(got, list) and len(got) == 1:
            got = got[0]
        if isinstance(got, (list, tuple)) and len(got) == 2:
            raise Wrong(f"you returned a {kind} of two numbers, the line's slope and intercept "
                        "(as np.polyfit does): return the slope alone, its element [0].")
        got = number(got, "the exponent")
        if not math.isclose(got, expected, rel_tol=1e-6):
            endpoints = math.log(values[-1] / values[0]) / math.log(sizes[-1] / sizes[0])
            if math.isclose(got, endpoints, rel_tol=1e-6):
                hint = ("you took the slope between the first and last points: fit a "
                        "least-squares line through all of them")
            elif math.isclose(got, measure.fit_exponent(values, sizes), rel_tol=1e-6):
                hint = ("you fitted log size against log value: the size goes on the x axis, "
                        "the value on the y axis")
            else:
                hint = "fit a straight line to (log size, log value) and return its slope"
            right, yours = texts_apart(expected, got)
            raise Wrong(f"for {description} the exponent is {right}, but yours is {yours}: "
                        f"{hint}.")
    return "a power law is a straight line on log-log axes, and its slope is the exponent."


def window_flops_reference(n, d, window):
    """4 d FLOPs for each (query, visible key) pair: query i sees min(i + 1, window) keys."""
    return 4 * d * sum(min(i + 1, window) for i in range(n))


def _window_flops_mistakes(n, d, window):
    """Typical wrong answers for these arguments, each with what it missed."""
    pairs = sum(min(i + 1, window) for i in range(n))
    return [
        (4 * d * (n * window - window * (window - 1) // 2),
         "the closed form N w - w (w - 1) / 2 holds only for N >= w; when the window is longer "
         "than the text, no query sees more than N keys: use m = min(N, w) in place of w"),
        (4 * d * sum(min(i, window) for i in range(n)),
         "query i sees itself too: min(i + 1, window) keys, not min(i, window)"),
        (4 * d * sum(min(i + 1, window + 1) for i in range(n)),
         "a window of width w holds w keys, the query itself and the w - 1 before it: you "
         "counted w + 1, min(i + 1, w + 1) keys for query i"),
        (4 * n * d * (window + 1),
         "a window of width w holds w keys, not w + 1, and the first queries see fewer"),
        (2 * d * pairs,
         "each visible pair costs two products of length d (the score and the weighted sum), "
         "so 4 d FLOPs, not 2 d"),
        (4 * n * d * window, "the first queries see fewer than window keys"),
        (8 * n * d * window,
         "that is what the blocked computation does (each query meets 2 window keys, half of "
         "them masked): count only the keys a query can see"),
        (2 * d * n * (n + 1), "that is full causal attention: query i sees at most window keys"),
        (2 * n * n * d, "that is about full causal attention: query i sees at most window keys"),
    ]


@exercise("ch5.window_flops")
def check_window_flops(window_flops):
    refuse_library(window_flops, (sparse.window_attention_flops, sparse.visible_pairs),
                   "with a sum over the queries or its closed form")
    for n, d, window in [(10, 4, 3), (1, 8, 3), (6, 2, 20), (131072, 128, 4096)]:
        expected = window_flops_reference(n, d, window)
        setting = f"n = {n}, d = {d}, window = {window}"
        got = call(window_flops, n, d, window, called_with=setting)
        got = whole_number(got, "the number of FLOPs")
        if got != expected:
            hint = next((hint for mistake, hint in _window_flops_mistakes(n, d, window)
                         if got == mistake != expected),
                        "count 4 d FLOPs for each query and each key it can see")
            raise Wrong(f"for {setting} expected {expected:,} FLOPs, got {got:,}: {hint}.")
    n, d, window = 131072, 128, 4096
    saving = cost.attention_flops(n, d, causal=True) / window_flops_reference(n, d, window)
    return (f"about 4 N w d, linear in N: at N = {n:,} a window of {window:,} needs "
            f"{saving:.1f} times fewer FLOPs than full causal attention "
            f"(cost.attention_flops(N, d, causal=True)).")
