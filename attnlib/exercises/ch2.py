"""Checks for chapter 2: scaled dot-product attention."""

import math

import torch

from attnlib.exercises import Wrong, call, exercise, matches, same_tensor

#: The width of the prediction exercise.
PREDICT_D_K = 256


@exercise("ch2.predict_std")
def check_predict_std(answer):
    expected = (math.sqrt(PREDICT_D_K), 1.0)
    try:
        unscaled, scaled = (float(a) for a in answer)
    except (TypeError, ValueError):
        raise Wrong("answer with two numbers: (std of q . k, std of q . k / sqrt(d_k)).") from None
    if not math.isclose(unscaled, expected[0], rel_tol=0.05):
        hint = (" That is the variance; the standard deviation is its square root."
                if math.isclose(unscaled, PREDICT_D_K, rel_tol=0.05) else
                " Each of the d_k products q_i k_i has variance 1, and variances of "
                "independent terms add.")
        raise Wrong(f"the std of q . k is sqrt({PREDICT_D_K}) = {expected[0]:g}, "
                    f"not {unscaled:g}.{hint}")
    if not math.isclose(scaled, expected[1], rel_tol=0.05):
        raise Wrong(f"dividing by sqrt(d_k) = {expected[0]:g} divides the std by it too, "
                    f"which gives {expected[1]:g}, not {scaled:g}.")
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
    for description, x in _softmax_cases():
        got = call(my_softmax, x.clone(), called_with=description)
        if isinstance(got, torch.Tensor) and got.shape == x.shape:
            if not torch.isfinite(got).all():
                raise Wrong(f"your softmax returned {got.tolist()} for {description}: exp "
                            "overflows (or underflows to 0/0); subtract the row maximum first.")
            sums = got.double().sum(dim=-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
                raise Wrong(f"for {description} the rows of your output sum to "
                            f"{sums.flatten()[0].item():.3g}, not 1: normalise over the last "
                            "dimension, with sum(dim=-1, keepdim=True).")
        same_tensor(got, torch.softmax(x.double(), dim=-1).to(x.dtype), f"softmax of {description}")
    return "subtracting the maximum keeps every exponent <= 0, so nothing overflows."


def _attention_cases():
    gen = torch.Generator().manual_seed(21)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return [
        ("q, k, v of shape (4, 8), (6, 8), (6, 3)", randn(4, 8), randn(6, 8), randn(6, 3)),
        ("a batch: q (2, 5, 16), k (2, 7, 16), v (2, 7, 4)",
         randn(2, 5, 16), randn(2, 7, 16), randn(2, 7, 4)),
    ]


def _softmax_over(dim, q, k, v, scale):
    return torch.softmax(q @ k.mT * scale, dim=dim) @ v


@exercise("ch2.attention")
def check_attention(my_attention):
    for description, q, k, v in _attention_cases():
        hint = ("For batches, transpose the last two dimensions with k.transpose(-2, -1) or "
                "k.mT; k.T reverses all of them." if q.dim() > 2 else None)
        got = call(my_attention, q, k, v, called_with=description, hint=hint)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        d_k = q.shape[-1]
        mistakes = [
            (_softmax_over(-1, q, k, v, 1.0), "equals attention without the division by "
             "sqrt(d_k): scale the scores by 1/sqrt(d_k)"),
            (_softmax_over(-1, q, k, v, 1 / d_k), "divides the scores by d_k: divide by "
             "sqrt(d_k) instead"),
            (_softmax_over(-2, q, k, v, d_k**-0.5), "takes the softmax over the queries: "
             "each query's weights over the keys must sum to 1, so use dim=-1"),
        ]
        for wrong_output, what in mistakes:
            if matches(got, wrong_output):
                raise Wrong(f"for {description} your output {what}.")
        same_tensor(got, expected, f"the output for {description}")
    return "your function agrees with torch.nn.functional.scaled_dot_product_attention."


@exercise("ch2.logsumexp")
def check_logsumexp(my_logsumexp):
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
        same_tensor(got, expected, f"logsumexp of {description}", atol=1e-4)
    return ("m + log(sum(exp(x - m))) never overflows; chapter 6 keeps exactly this number "
            "per row to recompute attention without storing it.")
