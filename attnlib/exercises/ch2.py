"""Checks for chapter 2: scaled dot-product attention."""

import math

import torch
from torch.nn.functional import scaled_dot_product_attention as torch_attention

from attnlib import attention, flash
from attnlib.exercises import (
    Wrong,
    bmm_hint,
    call,
    exercise,
    float_tolerance,
    mistake_named,
    number,
    number_text,
    refuse_library,
    same_tensor,
    scale_mistakes,
    texts_apart,
    wrong_prediction,
)

#: The width of the prediction exercise.
PREDICT_D_K = 256


def _std_hint(unscaled, scaled, expected):
    """A sentence on the first wrong number of a (unscaled, scaled) prediction; it does not
    give the right one."""
    if not math.isclose(unscaled, expected[0], rel_tol=0.05):
        if math.isclose(unscaled, PREDICT_D_K, rel_tol=0.05):
            return (f"{number_text(unscaled)} is the variance of q . k, not its standard "
                    "deviation: the standard deviation is the square root of the variance")
        if math.isclose(unscaled, 1, rel_tol=0.05):
            return ("the std of q . k is not 1: that is the std of one product q_i k_i, and "
                    f"q . k adds up d_k = {PREDICT_D_K} of them; variances of independent "
                    "terms add")
        return (f"the std of q . k is not {number_text(unscaled)}: each of the d_k = "
                f"{PREDICT_D_K} products q_i k_i has variance 1, variances of independent "
                "terms add, and the std is the square root of the variance")
    if math.isclose(scaled, unscaled / PREDICT_D_K, rel_tol=0.05):
        return (f"{number_text(scaled)} is the std divided by d_k, but the scores are divided "
                "by sqrt(d_k)")
    return (f"the std of q . k / sqrt(d_k) is not {number_text(scaled)}: dividing every score "
            "by sqrt(d_k) divides their std by sqrt(d_k) too")


@exercise("ch2.predict_std")
def check_predict_std(answer):
    expected = (math.sqrt(PREDICT_D_K), 1.0)
    try:
        parts = list(answer)
    except TypeError:
        parts = []
    if len(parts) != 2:
        raise Wrong("answer with two numbers: (std of q . k, std of q . k / sqrt(d_k)).")
    unscaled, scaled = (number(part, what) for part, what in
                        zip(parts, ("the std of q . k", "the std of q . k / sqrt(d_k)"),
                            strict=True))
    if not (math.isclose(unscaled, expected[0], rel_tol=0.05)
            and math.isclose(scaled, expected[1], rel_tol=0.05)):
        wrong_prediction("ch2.predict_std", _std_hint(unscaled, scaled, expected),
                         f"({expected[0]:g}, {expected[1]:g}): q . k has variance d_k = "
                         f"{PREDICT_D_K}, so its std is sqrt({PREDICT_D_K}) = {expected[0]:g}, "
                         f"and dividing by sqrt(d_k) = {expected[0]:g} brings it to 1")
    return (f"the std grows like sqrt(d_k), {expected[0]:g} here, and the scaling brings it "
            "back to 1 whatever d_k is.")


def _softmax_cases():
    gen = torch.Generator().manual_seed(20)
    return [
        ("logits [1000, 999, -1000]", torch.tensor([1000.0, 999.0, -1000.0])),
        ("logits [-1000, -1001]", torch.tensor([-1000.0, -1001.0])),
        ("a (3, 4, 5) batch of random logits", torch.randn(3, 4, 5, generator=gen)),
        ("logits [[1e4, 0], [0, -1e4]] in float32", torch.tensor([[1e4, 0.0], [0.0, -1e4]])),
    ]


@exercise("ch2.stable_softmax")
def check_stable_softmax(my_softmax):
    refuse_library(my_softmax, (torch.softmax, torch.nn.functional.softmax, attention.softmax,
                                flash.safe_softmax, flash.online_softmax),
                   "with exp, max and sum")
    for description, x in _softmax_cases():
        got = call(my_softmax, x.clone(), called_with=description)
        # float32 rounds x - max to a unit in the last place of x: 6e-5 at 1000
        tolerance = float_tolerance(x.dtype, float(x.abs().max()))
        if isinstance(got, torch.Tensor) and got.shape == x.shape:
            if not torch.isfinite(got).all():
                raise Wrong(f"your softmax returned {got.tolist()} for {description}: exp "
                            "overflows (or underflows to 0/0); subtract the row maximum first.")
            sums = got.double().sum(dim=-1).flatten()
            worst = int((sums - 1).abs().argmax())
            if abs(float(sums[worst]) - 1) > tolerance:
                raise Wrong(f"for {description} the rows of your output sum to "
                            f"{texts_apart(1, sums[worst])[1]}, not 1: normalise over the last "
                            "dimension, with sum(dim=-1, keepdim=True).")
        same_tensor(got, torch.softmax(x.double(), dim=-1).to(x.dtype), f"softmax of {description}",
                    atol=float_tolerance(x.dtype), rtol=tolerance)
    return "subtracting the maximum keeps every exponent <= 0, so nothing overflows."


def _attention_cases():
    gen = torch.Generator().manual_seed(21)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return [
        ("q, k, v of shape (4, 8), (6, 8), (6, 3)", randn(4, 8), randn(6, 8), randn(6, 3)),
        ("a batch: q (2, 5, 16), k (2, 7, 16), v (2, 7, 4)",
         randn(2, 5, 16), randn(2, 7, 16), randn(2, 7, 4)),
        ("two batch dimensions: q (2, 3, 5, 6), k (2, 3, 4, 6), v (2, 3, 4, 2)",
         randn(2, 3, 5, 6), randn(2, 3, 4, 6), randn(2, 3, 4, 2)),
    ]


def _softmax_over(dim, q, k, v, scale):
    return torch.softmax(q @ k.mT * scale, dim=dim) @ v


def _batch_hint(error):
    return bmm_hint(error) or (
        "For batches, transpose the last two dimensions with k.transpose(-2, -1) or k.mT; "
        "k.T reverses all of them, and transpose(1, 2) swaps others when there are two "
        "batch dimensions.")


@exercise("ch2.attention")
def check_attention(my_attention):
    refuse_library(my_attention, (torch_attention, attention.scaled_dot_product_attention),
                   "with matrix products and a softmax")
    for description, q, k, v in _attention_cases():
        got = call(my_attention, q, k, v, called_with=description,
                   hint=_batch_hint if q.dim() > 2 else None)
        d_k, d_v = q.shape[-1], v.shape[-1]
        mistakes = [
            *scale_mistakes(lambda scale, q=q, k=k, v=v: _softmax_over(-1, q, k, v, scale),
                            d_k, d_v),
            (_softmax_over(-2, q, k, v, d_k**-0.5), "takes the softmax over the queries: "
             "each query's weights over the keys must sum to 1, so use dim=-1"),
        ]
        expected = torch_attention(q, k, v)
        what = mistake_named(got, mistakes, expected)
        if what:
            raise Wrong(f"for {description} your output {what}.")
        same_tensor(got, expected, f"the output for {description}")
    return "your function agrees with torch.nn.functional.scaled_dot_product_attention."


@exercise("ch2.logsumexp")
def check_logsumexp(my_logsumexp):
    refuse_library(my_logsumexp, (torch.logsumexp,), "with max, exp, sum and log")
    gen = torch.Generator().manual_seed(22)
    cases = [
        ("logits [1000, 1000]", torch.tensor([1000.0, 1000.0])),
        ("logits [-1000, -999, -1001]", torch.tensor([-1000.0, -999.0, -1001.0])),
        ("a (4, 6) batch of random logits times 100", 100 * torch.randn(4, 6, generator=gen)),
    ]
    for description, x in cases:
        got = call(my_logsumexp, x.clone(), called_with=description)
        expected = torch.logsumexp(x.double(), dim=-1).to(x.dtype)
        if isinstance(got, torch.Tensor):
            if not torch.isfinite(got).all():
                raise Wrong(f"your logsumexp returned {got.tolist()} for {description}: use "
                            "m + log(sum(exp(x - m))) with m the maximum of each row.")
            if got.shape == (*expected.shape, 1):
                raise Wrong(f"for {description} your result has shape {tuple(got.shape)}: drop "
                            "the last dimension (keepdim=False, or squeeze(-1)), one number "
                            "per row.")
            row_max = x.amax(dim=-1)
            if got.shape == expected.shape and torch.allclose(got, expected - row_max, atol=1e-3):
                raise Wrong(f"for {description} your result is short of the right one by the row "
                            "maximum: did you add m back?")
        # float32 rounds m + log(...) to a unit in the last place of m: 6e-5 at 1000
        same_tensor(got, expected, f"logsumexp of {description}",
                    atol=float_tolerance(x.dtype, float(x.abs().max())), rtol=0)
    return ("m + log(sum(exp(x - m))) never overflows; chapter 6 keeps exactly this number "
            "per row to recompute attention without storing it.")
