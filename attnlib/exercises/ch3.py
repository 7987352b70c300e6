"""Checks for chapter 3: causal masking."""

import math

import torch

from attnlib.attention import scaled_dot_product_attention
from attnlib.exercises import Wrong, call, exercise, same_tensor
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
    if not isinstance(answer, dict):
        raise Wrong(f"answer with a dict such as {{'causal': 0, 'sliding_window': 0}}, "
                    f"got {type(answer).__name__}.")
    missing = [key for key in expected if key not in answer]
    if missing:
        raise Wrong(f"the dict needs the keys causal and sliding_window; missing "
                    f"{', '.join(missing)}.")
    for key, count in expected.items():
        got = answer[key]
        if isinstance(got, bool) or not isinstance(got, int):
            raise Wrong(f"{key} should be a whole number of (query, key) pairs, got {got!r}.")
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


@exercise("ch3.causal_attention")
def check_causal_attention(causal_attention):
    for description, q, k, v in _reference_cases():
        got = call(causal_attention, q, k, v, called_with=description)
        expected = scaled_dot_product_attention(q, k, v, is_causal=True)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            n = q.shape[-2]
            scores = q @ k.mT / math.sqrt(q.shape[-1])
            after = torch.softmax(scores, dim=-1) * causal_mask(n)
            future = scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(n).T)
            unscaled = scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
            if torch.allclose(got, after @ v, atol=1e-5):
                raise Wrong("your output is what zeroing the weights AFTER the softmax gives, so "
                            "the rows no longer sum to 1: mask the scores with -inf BEFORE it.")
            if torch.allclose(got, future, atol=1e-5):
                raise Wrong("your queries see the future and not the past: query i may attend "
                            "to keys 0..i, the lower triangle (tril), not the upper one.")
            if torch.allclose(got, unscaled, atol=1e-5):
                raise Wrong("your output is right except for the scale: divide the scores by "
                            "sqrt(d_k) before the softmax.")
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
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise Wrong(f"return three tensors (output, cache_k, cache_v), "
                        f"got {type(got).__name__}.")
        out, cache_k, cache_v = got
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        same_tensor(cache_k, k, f"the updated cache_k for {description}")
        same_tensor(cache_v, v, f"the updated cache_v for {description}")
        expected = scaled_dot_product_attention(q, k, v, is_causal=True)[n_cached:]
        new_q = q[n_cached:]
        if isinstance(out, torch.Tensor) and out.shape == expected.shape:
            top_left = scaled_dot_product_attention(new_q, k, v, is_causal=True)
            no_mask = scaled_dot_product_attention(new_q, k, v)
            if torch.allclose(out, top_left, atol=1e-5):
                raise Wrong(f"with {description}, your new queries see keys as if they were the "
                            f"FIRST positions (top-left, is_causal): they are the last "
                            f"{n_new}, so use kv_cache_causal_mask({n_new}, {n_cached + n_new}).")
            if n_new > 1 and torch.allclose(out, no_mask, atol=1e-5):
                raise Wrong(f"with {description}, your new tokens see each other's future: new "
                            f"token i may see the cache and new tokens 0..i, not later ones.")
        same_tensor(out, expected, f"the output for {description}")
    return ("each step computes K and V for the new tokens only, and its outputs are the rows "
            "full causal attention would give.")
