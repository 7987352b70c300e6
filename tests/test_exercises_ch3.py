import math

import pytest
import torch

from attnlib.exercises.ch3 import VISIBLE_SETTING
from tests.exercise_cases import assert_accepts, assert_rejects


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



def test_visible_pairs_feedback():
    right = REFERENCES["ch3.visible_pairs"]
    assert_rejects("ch3.visible_pairs", dict(right, causal=50),
                   "causal allows 55 pairs, not 50: query i sees keys 0..i")
    assert_rejects("ch3.visible_pairs", dict(right, sliding_window=30),
                   "sliding_window allows 27 pairs, not 30: query i sees min(i + 1, 3) keys")
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
        sees = torch.ones(n, n, dtype=torch.bool).triu()
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=sees)

    def unscaled(q, k, v):
        return reference_causal_attention(q * math.sqrt(q.shape[-1]), k, v)

    def unbatched(q, k, v):
        return reference_causal_attention(q, k, v).reshape(-1, v.shape[-1])

    assert_rejects("ch3.causal_attention", after_softmax, "AFTER the softmax")
    assert_rejects("ch3.causal_attention", upper, "see the future and not the past")
    assert_rejects("ch3.causal_attention", unscaled, "divide the scores by sqrt(d_k)")
    assert_rejects("ch3.causal_attention", unbatched,
                   "should have shape (2, 3, 6, 4), but yours has shape (36, 4)")


def learner_attention(mask="bool", diagonal=0, invert=True, dim=-1, transpose=None):
    """A learner's causal attention, right by default, with one usual mistake switched on."""
    def causal_attention(q, k, v):
        n = q.shape[-2]
        dtype = torch.bool if mask == "bool" else torch.float32
        sees = torch.ones(n, n, dtype=dtype).tril(diagonal)
        k_t = k.T if transpose == "T" else k.transpose(-2, -1)
        scores = q @ k_t / math.sqrt(q.shape[-1])
        hidden = ~sees if invert else sees
        return torch.softmax(scores.masked_fill(hidden, -math.inf), dim=dim) @ v
    return causal_attention


@pytest.mark.parametrize("mistake, sentence", [
    (dict(mask="float"), "your mask is float; make it boolean"),
    (dict(invert=False), "masked_fill fills where the mask is True: invert the mask"),
    (dict(diagonal=-1), "a query may also see itself: the diagonal is allowed"),
    (dict(dim=-2), "use softmax(dim=-1)"),
    (dict(transpose="T"), "use k.transpose(-2, -1)"),
])
def test_causal_attention_feedback_names_each_mistake(mistake, sentence):
    assert_accepts("ch3.causal_attention", learner_attention())
    assert_rejects("ch3.causal_attention", learner_attention(**mistake), sentence)


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
