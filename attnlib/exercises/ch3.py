"""Checks for chapter 3: causal masking."""

import math
import warnings

import torch
from torch.nn.functional import scaled_dot_product_attention as torch_attention

from attnlib.attention import scaled_dot_product_attention
from attnlib.exercises import (
    Wrong,
    bmm_hint,
    call,
    exercise,
    matches,
    mistake_named,
    refuse_library,
    require_keys,
    require_parts,
    same_tensor,
    scale_mistakes,
    whole_number,
    wrong_prediction,
)
from attnlib.masking import causal_mask, kv_cache_causal_mask, sliding_window_mask

#: The setting of the prediction exercise.
VISIBLE_SETTING = {"N": 10, "window": 3}


def _visible_pairs_hint(key, got, n, window):
    """A sentence on a wrong count of pairs that does not give the right count."""
    causal = {n * n: "that is every pair: a causal mask hides each query's future keys",
              n * (n - 1) // 2: "query i also sees itself: count the diagonal",
              n * n // 2: "half of N^2 leaves out half of the diagonal: query i sees keys "
                          "0..i, i + 1 of them"}
    wider = int(sliding_window_mask(n, window + 1).sum())
    sliding = {n * window: f"the first queries have fewer than {window} positions behind them",
               wider: f"a window of width {window} holds {window} keys, the query itself and "
                      f"the {window - 1} before it, not {window + 1}",
               n * (window + 1): f"a window of width {window} holds {window} keys, not "
                                 f"{window + 1}, and the first queries have fewer behind them",
               int(causal_mask(n).sum()): f"that is the causal count: the window cuts each "
                                          f"query's keys to at most {window}"}
    why = {"causal": f"query i sees keys 0..i, i + 1 of them, for i = 0..{n - 1}",
           "sliding_window": f"query i sees min(i + 1, {window}) keys: the first queries have "
                             f"fewer than {window} positions behind them"}
    return {"causal": causal, "sliding_window": sliding}[key].get(got, why[key])


@exercise("ch3.visible_pairs")
def check_visible_pairs(answer):
    n, window = VISIBLE_SETTING["N"], VISIBLE_SETTING["window"]
    expected = {"causal": int(causal_mask(n).sum()),
                "sliding_window": int(sliding_window_mask(n, window).sum())}
    require_keys(answer, list(expected), "{'causal': 0, 'sliding_window': 0}")
    got = {key: whole_number(answer[key], f"{key} (a count of (query, key) pairs)")
           for key in expected}
    for key, count in expected.items():
        if got[key] != count:
            wrong_prediction("ch3.visible_pairs",
                             f"{key} does not allow {got[key]} pairs: "
                             f"{_visible_pairs_hint(key, got[key], n, window)}",
                             f"{expected['causal']} causal, {expected['sliding_window']} with "
                             "the window")
    return (f"{expected['causal']} of the {n * n} pairs for causal, about half; a sliding window "
            f"grows as N x window, not N^2.")


def _reference_cases():
    gen = torch.Generator().manual_seed(3)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return [("q, k of shape (4, 3) and v of shape (4, 5)", randn(4, 3), randn(4, 3), randn(4, 5)),
            ("q, k of shape (2, 3, 6, 4) and v of shape (2, 3, 6, 2)",
             randn(2, 3, 6, 4), randn(2, 3, 6, 4), randn(2, 3, 6, 2))]


def _far_below_case():
    """q, k, v of shape (5, 4) where query 0 scores key 0, the one key it may see, at -3e9:
    below a fill value of -1e9, so that only -inf hides the other keys from it."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(5, 4, generator=gen) for _ in range(3))
    q[0] = -3e9 * math.sqrt(4) * k[0] / k[0].dot(k[0])
    return "q, k, v of shape (5, 4) where query 0 scores key 0 at -3e9", q, k, v


def _diagnose_causal_error(error, warned):
    """A sentence for the usual ways a causal attention function crashes, or None."""
    text = str(error)
    if any("x.T" in message for message in warned) or "x.T" in text:
        return ("k.T reverses ALL the dimensions of a batched (4-D) tensor: use "
                "k.transpose(-2, -1), which swaps only the last two.")
    if "invert" in text or "only supports boolean masks" in text:
        return ("your mask is float; make it boolean: torch.ones(n, n, "
                "dtype=torch.bool).tril().")
    return bmm_hint(error)


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


def _textbook(q, k, v, sees, dim=-1, fill=-math.inf, scale=None):
    """softmax(q k^T * scale, filled with `fill` where `sees` is False) v, NaN rows included;
    scale 1/sqrt(d_k) by default."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.mT * scale).masked_fill(~sees, fill)
    return torch.softmax(scores, dim=dim) @ v


def _causal_mistakes(q, k, v):
    """The outputs of the usual wrong causal attentions, with the sentence naming each."""
    lower = causal_mask(q.shape[-2])
    scores = q @ k.mT / math.sqrt(q.shape[-1])
    return [
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
        (_textbook(q, k, v, torch.ones_like(lower).tril(1)),
         "your queries peek one token ahead: tril(1) lets query i see key i + 1 too; use "
         "tril(), whose diagonal 0 stops at the query itself."),
        (_textbook(q, k, v, lower, dim=-2),
         "your softmax runs over the queries: each query's weights over the keys "
         "must sum to 1, so use softmax(dim=-1)."),
        (_textbook(q, k, v, lower, fill=0.0),
         "your masked scores are 0, not -inf, and a score of 0 still gets the weight e^0 "
         "after the softmax (filling with 0, or multiplying the scores by the mask, does "
         "this): fill the hidden scores with -inf."),
        *((_textbook(q, k, v, lower, fill=fill),
           f"your masked keys keep a weight of about e^({fill:g} - max): fill with -inf, not "
           f"a finite number such as {fill:g}, so that exp gives exactly 0.")
          for fill in (-1.0, -5.0, -10.0)),
        *((wrong, f"your output {what}.") for wrong, what in scale_mistakes(
            lambda scale: _textbook(q, k, v, lower, scale=scale), q.shape[-1], v.shape[-1])),
    ]


@exercise("ch3.causal_attention")
def check_causal_attention(causal_attention):
    refuse_library(causal_attention, (scaled_dot_product_attention, torch_attention),
                   "with a boolean mask, masked_fill and torch.softmax")
    for description, q, k, v in _reference_cases():
        got = _call_causal_attention(causal_attention, q, k, v, description)
        expected = scaled_dot_product_attention(q, k, v, is_causal=True)
        sentence = mistake_named(got, _causal_mistakes(q, k, v), expected)
        if sentence:
            raise Wrong(f"with {description}, {sentence}")
        same_tensor(got, expected, f"the output for {description}")
    description, q, k, v = _far_below_case()
    got = _call_causal_attention(causal_attention, q, k, v, description)
    expected = scaled_dot_product_attention(q, k, v, is_causal=True)
    if (isinstance(got, torch.Tensor) and got.shape == expected.shape
            and matches(got[1:], expected[1:]) and not matches(got, expected)):
        raise Wrong(f"with {description}, query 0 gives weight to keys it may not see: a finite "
                    "fill value such as -1e9 is not below every score; fill with -inf "
                    "(float('-inf')), which is.")
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
        mask = kv_cache_causal_mask(n_new, n_cached + n_new)
        what = mistake_named(out, scale_mistakes(
            lambda scale, q=new_q, k=k, v=v, mask=mask: scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=scale), 4, 5), expected)
        if what:
            raise Wrong(f"with {description}, your output {what}.")
        same_tensor(out, expected, f"the output for {description}")
    return ("each step computes K and V for the new tokens only, and its outputs are the rows "
            "full causal attention would give.")
