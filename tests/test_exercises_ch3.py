import math

import pytest
import torch

from attnlib.attention import scaled_dot_product_attention
from attnlib.exercises.ch3 import VISIBLE_SETTING
from tests.exercise_cases import (
    assert_accepts,
    assert_hints_then_reveals,
    assert_refuses_the_library,
    assert_rejects,
)


def reference_visible_pairs(N, window):
    causal = sum(1 for i in range(N) for j in range(N) if j <= i)
    sliding = sum(1 for i in range(N) for j in range(N) if i - window < j <= i)
    return {"causal": causal, "sliding_window": sliding}


def reference_causal_attention(q, k, v):
    n = q.shape[-2]
    future = torch.arange(n)[None, :] > torch.arange(n)[:, None]
    scores = torch.einsum("...id,...jd->...ij", q, k) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(future, -math.inf), dim=-1) @ v


def reference_decode_step(x_new, cache_k, cache_v, w_q, w_k, w_v):
    cache_k = torch.cat([cache_k, x_new @ w_k])
    cache_v = torch.cat([cache_v, x_new @ w_v])
    n_new, n = x_new.shape[0], cache_k.shape[0]
    rows = []
    for i in range(n_new):  # new token i sits at position n - n_new + i and sees keys up to it
        seen = n - n_new + i + 1
        q = x_new[i] @ w_q
        weights = torch.softmax(cache_k[:seen] @ q / math.sqrt(q.shape[0]), dim=0)
        rows.append(weights @ cache_v[:seen])
    return torch.stack(rows), cache_k, cache_v


REFERENCES = {
    "ch3.visible_pairs": reference_visible_pairs(**VISIBLE_SETTING),
    "ch3.causal_attention": reference_causal_attention,
    "ch3.decode_step": reference_decode_step,
}


def sliding_pairs(n, keys_per_query):
    """Pairs of a window that lets query i see min(i + 1, keys_per_query) keys."""
    return sum(1 for i in range(n) for j in range(n) if 0 <= i - j < keys_per_query)


@pytest.mark.parametrize(("wrong", "phrase"), [
    (dict(causal=50), "causal does not allow 50 pairs: half of N^2 leaves out half"),
    (dict(causal=45), "query i also sees itself: count the diagonal"),
    (dict(causal=100), "that is every pair"),
    (dict(causal=54), "causal does not allow 54 pairs: query i sees keys 0..i"),
    (dict(sliding_window=30), "the first queries have fewer than 3 positions behind them"),
    (dict(sliding_window=sliding_pairs(10, 4)), "a window of width 3 holds 3 keys, the query "
                                                "itself and the 2 before it, not 4"),
    (dict(sliding_window=40), "holds 3 keys, not 4, and the first queries have fewer"),
    (dict(sliding_window=55), "that is the causal count"),
    (dict(sliding_window=26), "query i sees min(i + 1, 3) keys"),
])
def test_visible_pairs_hints_without_the_counts_then_gives_them(wrong, phrase):
    right = REFERENCES["ch3.visible_pairs"]
    assert_hints_then_reveals("ch3.visible_pairs", dict(right, **wrong), phrase,
                              "55 causal, 27 with the window")


def test_visible_pairs_form():
    right = REFERENCES["ch3.visible_pairs"]
    assert_rejects("ch3.visible_pairs", {"causal": 55}, "missing 'sliding_window'")
    assert_rejects("ch3.visible_pairs", dict(right, causal=55.5), "whole number")
    assert_rejects("ch3.visible_pairs", dict(right, causal="55"), "should be a number, got '55'")
    assert_accepts("ch3.visible_pairs", {k: float(v) for k, v in right.items()})


def test_causal_attention_feedback_names_the_usual_mistakes():
    def after_softmax(q, k, v):
        n = q.shape[-2]
        weights = torch.softmax(q @ k.mT / math.sqrt(q.shape[-1]), dim=-1)
        return (weights * torch.ones(n, n).tril()) @ v

    def upper(q, k, v):
        n = q.shape[-2]
        hidden = torch.ones(n, n, dtype=torch.bool).tril(-1)
        scores = q @ k.mT / math.sqrt(q.shape[-1])
        return torch.softmax(scores.masked_fill(hidden, -math.inf), dim=-1) @ v

    def unscaled(q, k, v):
        return reference_causal_attention(q * math.sqrt(q.shape[-1]), k, v)

    def unbatched(q, k, v):
        return reference_causal_attention(q, k, v).reshape(-1, v.shape[-1])

    assert_rejects("ch3.causal_attention", after_softmax, "AFTER the softmax")
    assert_rejects("ch3.causal_attention", upper, "see the future and not the past")
    assert_rejects("ch3.causal_attention", unscaled, "scale the scores by 1/sqrt(d_k)")
    assert_rejects("ch3.causal_attention", unbatched,
                   "should have shape (2, 3, 6, 2), but yours has shape (36, 2)")


def learner_attention(mask="bool", diagonal=0, invert=True, dim=-1, transpose=None,
                      fill=-math.inf, width="d_k"):
    """A learner's causal attention, right by default, with one usual mistake switched on."""
    def causal_attention(q, k, v):
        n = q.shape[-2]
        dtype = torch.bool if mask == "bool" else torch.float32
        sees = torch.ones(n, n, dtype=dtype).tril(diagonal)
        k_t = k.T if transpose == "T" else k.transpose(-2, -1)
        scores = q @ k_t / math.sqrt({"d_k": q, "d_v": v}[width].shape[-1])
        if mask == "multiply":
            return torch.softmax(scores * sees, dim=dim) @ v
        hidden = ~sees if invert else sees
        return torch.softmax(scores.masked_fill(hidden, fill), dim=dim) @ v
    return causal_attention


@pytest.mark.parametrize("mistake, sentence", [
    (dict(mask="float"), "your mask is float; make it boolean"),
    (dict(invert=False), "masked_fill fills where the mask is True: invert the mask"),
    (dict(diagonal=-1), "a query may also see itself: the diagonal is allowed"),
    (dict(diagonal=1), "your queries peek one token ahead: tril(1) lets query i see key i + 1"),
    (dict(dim=-2), "use softmax(dim=-1)"),
    (dict(transpose="T"), "use k.transpose(-2, -1)"),
    (dict(width="d_v"), "divides the scores by sqrt(d_v) = sqrt(5), the width of the values"),
    (dict(fill=0.0), "your masked scores are 0, not -inf"),
    (dict(mask="multiply"), "multiplying the scores by the mask"),
    (dict(fill=-10.0), "fill with -inf, not a finite number such as -10"),
    (dict(fill=-1e9), "with q, k, v of shape (5, 4) where query 0 scores key 0 at -3e9, query 0 "
                      "gives weight to keys it may not see: a finite fill value such as -1e9"),
    (dict(fill=-1e4), "a finite fill value such as -1e9 is not below every score"),
    (dict(fill=-100.0), "fill with -inf (float('-inf'))"),
])
def test_causal_attention_feedback_names_each_mistake(mistake, sentence):
    assert_accepts("ch3.causal_attention", learner_attention())
    assert_rejects("ch3.causal_attention", learner_attention(**mistake), sentence)


def test_causal_attention_accepts_other_right_forms():
    def additive(q, k, v):  # a float mask added, -inf above the diagonal, with einsum
        n = q.shape[-2]
        future = torch.full((n, n), -math.inf).triu(1)
        scores = torch.einsum("...id,...jd->...ij", q, k) / q.shape[-1] ** 0.5 + future
        return torch.einsum("...ij,...jd->...id", scores.softmax(dim=-1), v)

    assert_accepts("ch3.causal_attention", additive)
    # the lowest float32 is below every score: a fill value that no score can beat
    assert_accepts("ch3.causal_attention", learner_attention(fill=torch.finfo().min))


def test_causal_attention_refuses_the_attention_functions():
    assert_refuses_the_library("ch3.causal_attention", scaled_dot_product_attention,
                               is_causal=True)
    assert_refuses_the_library("ch3.causal_attention",
                               torch.nn.functional.scaled_dot_product_attention, is_causal=True)


def test_causal_attention_with_bmm_fails_on_two_batch_dimensions_and_says_why():
    def with_bmm(q, k, v):
        if q.dim() == 2:
            return with_bmm(q[None], k[None], v[None])[0]
        return torch.bmm(torch.softmax(torch.bmm(q, k.mT) / math.sqrt(q.shape[-1])
                                       + torch.full((q.shape[1],) * 2, -math.inf).triu(1),
                                       dim=-1), v)

    assert_rejects("ch3.causal_attention", with_bmm, "torch.bmm takes 3-D tensors only")


def test_causal_attention_float_mask_in_masked_fill_is_named():
    def float_mask_filled(q, k, v):
        n = q.shape[-2]
        sees = torch.ones(n, n).tril()
        scores = q @ k.mT / math.sqrt(q.shape[-1])
        return torch.softmax(scores.masked_fill(1 - sees, -math.inf), dim=-1) @ v

    assert_rejects("ch3.causal_attention", float_mask_filled, "your mask is float")


def test_decode_step_feedback_names_the_alignment_mistake():
    def top_left(x_new, cache_k, cache_v, w_q, w_k, w_v):
        k, v = torch.cat([cache_k, x_new @ w_k]), torch.cat([cache_v, x_new @ w_v])
        out = torch.nn.functional.scaled_dot_product_attention(x_new @ w_q, k, v, is_causal=True)
        return out, k, v

    def unmasked(x_new, cache_k, cache_v, w_q, w_k, w_v):
        k, v = torch.cat([cache_k, x_new @ w_k]), torch.cat([cache_v, x_new @ w_v])
        return torch.nn.functional.scaled_dot_product_attention(x_new @ w_q, k, v), k, v

    def cache_not_updated(x_new, cache_k, cache_v, w_q, w_k, w_v):
        out, _, _ = reference_decode_step(x_new, cache_k, cache_v, w_q, w_k, w_v)
        return out, cache_k, cache_v

    assert_rejects("ch3.decode_step", top_left, "as if they were the FIRST positions")
    assert_rejects("ch3.decode_step", unmasked, "see each other's future")
    assert_rejects("ch3.decode_step", cache_not_updated,
                   "the updated cache_k for 4 cached tokens and x_new of shape (1, 6), d_k = 4, "
                   "d_v = 5 should have shape (5, 4), but yours has shape (4, 4)")
    assert_rejects("ch3.decode_step", lambda *a: a[0],
                   "return the three values (output, cache_k, cache_v)")


def test_decode_step_feedback_names_the_order_mistakes():
    def attend_then_append(x_new, cache_k, cache_v, w_q, w_k, w_v):
        out = torch.nn.functional.scaled_dot_product_attention(x_new @ w_q, cache_k, cache_v)
        return out, torch.cat([cache_k, x_new @ w_k]), torch.cat([cache_v, x_new @ w_v])

    def prepend(x_new, cache_k, cache_v, w_q, w_k, w_v):
        out, _, _ = reference_decode_step(x_new, cache_k, cache_v, w_q, w_k, w_v)
        return out, torch.cat([x_new @ w_k, cache_k]), torch.cat([x_new @ w_v, cache_v])

    assert_rejects("ch3.decode_step", attend_then_append,
                   "a new token must also see itself, so append first, then attend")
    assert_rejects("ch3.decode_step", prepend, "new keys go at the end")


def test_decode_step_names_the_scale_by_sqrt_d_v():
    def by_d_v(x_new, cache_k, cache_v, w_q, w_k, w_v):
        k, v = torch.cat([cache_k, x_new @ w_k]), torch.cat([cache_v, x_new @ w_v])
        n_new, n = x_new.shape[0], k.shape[0]
        sees = torch.ones(n_new, n, dtype=torch.bool).tril(n - n_new)
        scores = (x_new @ w_q) @ k.T / math.sqrt(v.shape[-1])
        return torch.softmax(scores.masked_fill(~sees, -math.inf), dim=-1) @ v, k, v

    assert_rejects("ch3.decode_step", by_d_v,
                   "your output divides the scores by sqrt(d_v) = sqrt(5), the width of the "
                   "values: divide by sqrt(d_k) = sqrt(4)")
