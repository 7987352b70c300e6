"""Checks for chapter 5: the quadratic cost of attention."""

import math
import numbers
import random

import torch

from attnlib import cost
from attnlib.exercises import Wrong, call, exercise

#: The setting of the doubling prediction: one float32 head of width 64, N from 4096 to 8192.
DOUBLING_SETTING = {"n": 4096, "d": 64, "d_model": 64, "dtype": torch.float32}

_DOUBLING_HINTS = {
    "attention_flops": "Q K^T and A V each take N x N dot products",
    "projection_flops": "each token is projected on its own, so the work is linear in N",
    "score_bytes": "the score matrix has N x N entries",
    "kv_cache_bytes": "the cache holds one key and one value per token, linear in N",
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
    if not isinstance(answer, dict):
        raise Wrong(f"answer with a dict such as {{'attention_flops': 2, ...}}, "
                    f"got {type(answer).__name__}.")
    missing = [key for key in expected if key not in answer]
    if missing:
        raise Wrong(f"the dict needs the keys {', '.join(expected)}; missing {', '.join(missing)}.")
    for key, factor in expected.items():
        got = answer[key]
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            raise Wrong(f"{key} should be a number (the factor), got {got!r}.")
        if not math.isclose(got, factor):
            raise Wrong(f"{key} grows by a factor of {factor:g}, not {got:g}: "
                        f"{_DOUBLING_HINTS[key]}.")
    return ("twice the tokens: 4 times the attention work and score memory, "
            "but only twice the projections and the KV cache.")


def _noisy_power_law(seed):
    rng = random.Random(seed)
    sizes = [256 * 2**i for i in range(6)]
    values = [1e-9 * n**2 * rng.uniform(0.7, 1.4) for n in sizes]
    return sizes, values


@exercise("ch5.fit_exponent")
def check_fit_exponent(my_fit_exponent):
    exact_sizes = [100, 300, 1000, 3000]
    cases = [(f"sizes {exact_sizes} and values 5 * n**1.5", exact_sizes,
              [5 * n**1.5 for n in exact_sizes])]
    for seed in (1, 2):
        sizes, values = _noisy_power_law(seed)
        cases.append((f"six noisy timings that grow about like N^2 (seed {seed})", sizes, values))
    for description, sizes, values in cases:
        got = call(my_fit_exponent, list(sizes), list(values), called_with=description)
        expected = cost.fit_exponent(sizes, values)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            raise Wrong(f"return the exponent as one number, got {type(got).__name__}.")
        if not math.isclose(got, expected, rel_tol=1e-6):
            endpoints = math.log(values[-1] / values[0]) / math.log(sizes[-1] / sizes[0])
            hint = ("you took the slope between the first and last points: fit a least-squares "
                    "line through all of them" if math.isclose(got, endpoints, rel_tol=1e-6)
                    else "fit a straight line to (log size, log value) and return its slope")
            raise Wrong(f"for {description} the exponent is {expected:.4f}, "
                        f"but yours is {got:.4g}: {hint}.")
    return "a power law is a straight line on log-log axes, and its slope is the exponent."


def window_flops_reference(n, d, window):
    """4 d FLOPs for each (query, visible key) pair: query i sees min(i + 1, window) keys."""
    return 4 * d * sum(min(i + 1, window) for i in range(n))


@exercise("ch5.window_flops")
def check_window_flops(window_flops):
    for n, d, window in [(10, 4, 4), (1, 8, 3), (6, 2, 20), (131072, 128, 4096)]:
        expected = window_flops_reference(n, d, window)
        setting = f"n = {n}, d = {d}, window = {window}"
        got = call(window_flops, n, d, window, called_with=setting)
        if isinstance(got, bool) or not isinstance(got, numbers.Real):
            raise Wrong(f"return the number of FLOPs, got {type(got).__name__}.")
        if got != expected:
            hint = ("the first queries see fewer than window keys"
                    if got == 4 * n * d * window else
                    "count 4 d FLOPs for each query and each key it can see")
            raise Wrong(f"for {setting} expected {expected:,} FLOPs, got {got:,}: {hint}.")
    n, d, window = 131072, 128, 4096
    saving = cost.attention_flops(n, d, causal=True) / window_flops_reference(n, d, window)
    return (f"about 4 N w d, linear in N: at N = {n:,} a window of {window:,} needs "
            f"{saving:.1f} times fewer FLOPs than full causal attention.")
