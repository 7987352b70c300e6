"""Checks for chapter 3: causal masking."""

import math
import warnings

import torch

from attnlib.attention import scaled_dot_product_attention
from attnlib.exercises import (
    Wrong,
    call,
    exercise,
    matches,
    require_keys,
    require_parts,
    same_tensor,
    whole_number,
)
from attnlib.masking import causal_mask, sliding_window_mask

#: The setting of the prediction exercise.
VISIBLE_SETTING = {"N": 10, "window": 3}


@exercise("ch3.visible_pairs")
def check_visible_pairs(answer):
    n, window = VISIBLE_SETTING["N"], VISIBLE_SETTING["window"]
    expected = {"causal": int(causal_mask(n).sum()),
                "sliding_window": int(sliding_window_mask(n, window).sum())}
    why = {"causal": f"query i sees keys 0..i, i + 1 of them, for i = 0..{n - 1}",
           "sliding_window": f"query i sees min(i + 1, {window}) keys: the first queries have "
                             f"fewer than {window} positions behind them"}
    require_keys(answer, list(expected), "{'causal': 0, 'sliding_window': 0}")
    for key, count in expected.items():
        got = whole_number(answer[key], f"{key} (a count of (query, key) pairs)")
        if got != count:
            raise Wrong(f"{key} allows {count} pairs, not {got}: {why[key]}.")
    return (f"{expected['causal']} of the {n * n} pairs for causal, about half; a sliding window "
            f"grows as N x window, not N^2.")


def _reference_cases():
    gen = torch.Generator().manual_seed(3)
    return [("q, k, v of shape (4, 3)",
             *(torch.randn(4, 3, generator=gen) for _ in range(3))),
            ("q, k, v of shape (2, 3, 6, 4)",
             *(torch.randn(2, 3, 6, 4, generator=gen) for _ in range(3)))]


def _diagnose_causal_error(error, warned):
    """A sentence for the usual ways a causal attention function crashes, or None."""
    text = str(error)
    if any("x.T" in message for message in warned) or "x.T" in text:
        return ("k.T reverses ALL the dimensions of a batched (4-D) tensor: use "
                "k.transpose(-2, -1), which swaps only the last two.")
    if "invert" in text or "only supports boolean masks" in text:
        return ("your mask is float; make it boolean: torch.ones(n, n, "
                "dtype=torch.bool).tril().")
    return None


def _call_causal_attention(causal_attention, q, k, v, description):
    """`call`, plus a targeted sentence when the learner's function raises a usual error."""
    if not callable(causal_attention):
        return call(causal_attention, q, k, v, called_with=description)
    diagnosis = []

    def watched(*args):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return causal_attention(*args)
            except Exception as error:
                diagnosis.append(_diagnose_causal_error(error, [str(w.message) for w in caught]))
                raise

    try:
        return call(watched, q, k, v, called_with=description)
    except Wrong:
        if diagnosis and diagnosis[0]:
            raise Wrong(f"with {description}, {diagnosis[0]}") from None
        raise


def _textbook(q, k, v, sees, dim=-1):
    """softmax(q k^T / sqrt(d_k), masked where `sees` is False) v, NaN rows included."""
    scores = (q @ k.mT / math.sqrt(q.shape[-1])).masked_fill(~sees, -math.inf)
    return torch.softmax(scores, dim=dim) @ v


@exercise("ch3.causal_attention")
def check_causal_attention(causal_attention):
    for description, q, k, v in _reference_cases():
        got = _call_causal_attention(causal_attention, q, k, v, description)
        expected = scaled_dot_product_attention(q, k, v, is_causal=True)
        n = q.shape[-2]
        lower = causal_mask(n)
        scores = q @ k.mT / math.sqrt(q.shape[-1])
        mistakes = [
            (torch.softmax(scores, dim=-1) * lower @ v,
             "your output is what zeroing the weights AFTER the softmax gives, so the rows "
             "no longer sum to 1: mask the scores with -inf BEFORE it."),
            (_textbook(q, k, v, lower.T),
             "your queries see the future and not the past: query i may attend to keys "
             "0..i, the lower triangle (tril), not the upper one."),
            (_textbook(q, k, v, ~lower),
             "masked_fill fills where the mask is True: invert the mask, "
             "masked_fill(~mask, -inf), to hide the keys a query may NOT see."),
            (_textbook(q, k, v, lower.tril(-1)),
             "a query may also see itself: the diagonal is allowed, so use tril(), "
             "not tril(-1)."),
            (_textbook(q, k, v, lower, dim=-2),
             "your softmax runs over the queries: each query's weights over the keys "
             "must sum to 1, so use softmax(dim=-1)."),
            (scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0),
             "your output is right except for the scale: divide the scores by sqrt(d_k) "
             "before the softmax."),
        ]
        for wrong, sentence in mistakes:
            if matches(got, wrong):
                raise Wrong(sentence)
        same_tensor(got, expected, f"the output for {description}")
    return "-inf before the softmax: every row still sums to 1 over the keys it may see."


def _decode_case(n_cached, n_new):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(n_cached + n_new, 6, generator=gen)
    w_q, w_k, w_v = (torch.randn(6, d, generator=gen) / math.sqrt(6) for d in (4, 4, 5))
    return x, w_q, w_k, w_v


@exercise("ch3.decode_step")
def check_decode_step(decode_step):
    for n_cached, n_new in ((4, 1), (5, 3)):
        x, w_q, w_k, w_v = _decode_case(n_cached, n_new)
        cached, new = x[:n_cached], x[n_cached:]
        description = (f"{n_cached} cached tokens and x_new of shape ({n_new}, 6), "
                       f"d_k = 4, d_v = 5")
        got = call(decode_step, new, cached @ w_k, cached @ w_v, w_q, w_k, w_v,
                   called_with=description)
        out, cache_k, cache_v = require_parts(got, ("output", "cache_k", "cache_v"))
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        prepended = torch.cat([k[n_cached:], k[:n_cached]])
        if matches(cache_k, prepended):
            raise Wrong(f"with {description}, your cache_k starts with the new keys: new keys "
                        f"go at the end, torch.cat([cache_k, x_new @ w_k]).")
        same_tensor(cache_k, k, f"the updated cache_k for {description}")
        same_tensor(cache_v, v, f"the updated cache_v for {description}")
        expected = scaled_dot_product_attention(q, k, v, is_causal=True)[n_cached:]
        new_q = q[n_cached:]
        top_left = scaled_dot_product_attention(new_q, k, v, is_causal=True)
        no_mask = scaled_dot_product_attention(new_q, k, v)
        old_cache_only = scaled_dot_product_attention(new_q, k[:n_cached], v[:n_cached])
        if matches(out, old_cache_only):
            raise Wrong(f"with {description}, your new tokens see only the old cache: a new "
                        f"token must also see itself, so append first, then attend.")
        if matches(out, top_left):
            raise Wrong(f"with {description}, your new queries see keys as if they were the "
                        f"FIRST positions (top-left, is_causal): they are the last "
                        f"{n_new}, so use kv_cache_causal_mask({n_new}, {n_cached + n_new}).")
        if n_new > 1 and matches(out, no_mask):
            raise Wrong(f"with {description}, your new tokens see each other's future: new "
                        f"token i may see the cache and new tokens 0..i, not later ones.")
        same_tensor(out, expected, f"the output for {description}")
    return ("each step computes K and V for the new tokens only, and its outputs are the rows "
            "full causal attention would give.")
