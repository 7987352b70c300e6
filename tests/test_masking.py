import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from attnlib.attention import scaled_dot_product_attention
from attnlib.masking import (
    causal_mask,
    combine_masks,
    kv_cache_causal_mask,
    padding_mask,
    sliding_window_mask,
    to_additive,
)
from tests.reference import randn

SIZES = [(1, 1), (4, 4), (3, 7), (7, 3), (1, 5), (6, 1)]


def table(n_q, n_k, rule):
    return torch.tensor([[rule(i, j) for j in range(n_k)] for i in range(n_q)])


@pytest.mark.parametrize(("n_q", "n_k"), SIZES)
def test_causal_mask_is_pytorchs_is_causal(n_q, n_k):
    assert torch.equal(causal_mask(n_q, n_k), table(n_q, n_k, lambda i, j: j <= i))
    q, k, v = randn(2, n_q, 4, seed=1), randn(2, n_k, 4, seed=2), randn(2, n_k, 3, seed=3)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(n_q, n_k))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_causal_mask_square_by_default_and_on_the_device_asked():
    mask = causal_mask(5, device="meta")
    assert mask.shape == (5, 5) and mask.dtype == torch.bool and mask.device.type == "meta"


@pytest.mark.parametrize(("n_q", "n_k"), [(n_q, n_k) for n_q, n_k in SIZES if n_q <= n_k])
def test_kv_cache_mask_puts_the_queries_at_the_end(n_q, n_k):
    expected = table(n_q, n_k, lambda i, j: j <= n_k - n_q + i)
    assert torch.equal(kv_cache_causal_mask(n_q, n_k), expected)
    assert torch.equal(kv_cache_causal_mask(n_q, n_k), causal_mask(n_k)[n_k - n_q:])
    q, k, v = randn(n_q, 4, seed=1), randn(n_k, 4, seed=2), randn(n_k, 3, seed=3)
    pytorch = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(n_q, n_k))
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=kv_cache_causal_mask(n_q, n_k))
    torch.testing.assert_close(got, pytorch, rtol=1e-12, atol=1e-12)


def test_decoding_with_a_cache_needs_the_kv_cache_mask_not_is_causal():
    """New tokens processed after a cache of earlier ones give the rows of full causal
    attention only with the bottom-right mask."""
    n, n_new = 9, 3
    q, k, v = randn(2, n, 4, seed=4), randn(2, n, 4, seed=5), randn(2, n, 3, seed=6)
    full = scaled_dot_product_attention(q, k, v, is_causal=True)
    # keys and values of all positions are in the cache; only the new queries are computed
    new_q = q[:, n - n_new:]
    cached = scaled_dot_product_attention(new_q, k, v, attn_mask=kv_cache_causal_mask(n_new, n))
    torch.testing.assert_close(cached, full[:, n - n_new:], rtol=1e-12, atol=1e-12)
    top_left = scaled_dot_product_attention(new_q, k, v, is_causal=True)
    assert not torch.allclose(top_left, full[:, n - n_new:])


def test_one_token_at_a_time_with_a_cache_equals_full_causal_attention():
    n = 7
    x = randn(n, 6, seed=7)
    w_q, w_k, w_v = randn(6, 4, seed=8), randn(6, 4, seed=9), randn(6, 5, seed=10)
    full = scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v, is_causal=True)
    cache_k, cache_v, rows = x[:0] @ w_k, x[:0] @ w_v, []
    for t in range(n):
        cache_k = torch.cat([cache_k, x[t:t + 1] @ w_k])
        cache_v = torch.cat([cache_v, x[t:t + 1] @ w_v])
        rows.append(scaled_dot_product_attention(x[t:t + 1] @ w_q, cache_k, cache_v,
                                                 attn_mask=kv_cache_causal_mask(1, t + 1)))
    torch.testing.assert_close(torch.cat(rows), full, rtol=1e-12, atol=1e-12)


def test_kv_cache_mask_refuses_more_queries_than_keys():
    with pytest.raises(ValueError, match="n_q = 5 new queries cannot be the last positions of "
                                         "only n_k = 3 keys"):
        kv_cache_causal_mask(5, 3)


@pytest.mark.parametrize("make", [causal_mask, kv_cache_causal_mask])
def test_causal_masks_reject_bad_sizes(make):
    with pytest.raises(ValueError, match="n_q must be >= 0, got -1"):
        make(-1, 3)
    with pytest.raises(TypeError, match="n_k must be an int, got float"):
        make(2, 3.0)


@pytest.mark.parametrize(("n", "window"), [(1, 1), (6, 1), (6, 2), (7, 3), (5, 5), (4, 9)])
def test_sliding_window_sees_the_last_window_positions(n, window):
    expected = table(n, n, lambda i, j: i - window < j <= i)
    assert torch.equal(sliding_window_mask(n, window), expected)
    assert sliding_window_mask(n, window).sum(-1).max() == min(n, window)
    if window >= n:
        assert torch.equal(sliding_window_mask(n, window), causal_mask(n))


def test_an_empty_sequence_gives_empty_masks():
    assert causal_mask(0).shape == (0, 0) and kv_cache_causal_mask(0, 4).shape == (0, 4)
    assert sliding_window_mask(0, 3).shape == (0, 0)
    assert padding_mask([0, 0], 0).shape == (2, 1, 1, 0)
    assert causal_mask(3, 0).shape == (3, 0)  # queries with no key: the zero-output policy


def test_sliding_window_rejects_bad_arguments():
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        sliding_window_mask(4, 0)
    with pytest.raises(TypeError, match="n must be an int, got str"):
        sliding_window_mask("4", 2)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_padding_mask_marks_the_real_keys(as_tensor):
    lengths, n = [3, 5, 0, 1], 5
    mask = padding_mask(torch.tensor(lengths) if as_tensor else lengths, n)
    assert mask.shape == (4, 1, 1, 5) and mask.dtype == torch.bool
    for b, length in enumerate(lengths):
        assert mask[b, 0, 0].tolist() == [j < length for j in range(n)]


def test_padding_leaves_the_real_tokens_outputs_as_they_are_alone():
    """Each sentence of a padded batch gets the output it would get on its own."""
    lengths, n, heads = [5, 2, 4], 5, 2
    x = randn(3, heads, n, 4, seed=11)
    x_padded = x.clone()
    for b, length in enumerate(lengths):
        x_padded[b, :, length:] = 1e3  # whatever the padding holds must not matter
    mask = padding_mask(lengths, n)
    for attention in (scaled_dot_product_attention, F.scaled_dot_product_attention):
        batch = attention(x_padded, x_padded, x_padded, attn_mask=mask)
        for b, length in enumerate(lengths):
            alone = x[b, :, :length]
            torch.testing.assert_close(batch[b, :, :length], attention(alone, alone, alone),
                                       rtol=1e-10, atol=1e-10)


def test_padding_mask_rejects_bad_lengths():
    with pytest.raises(ValueError, match=r"lengths must be one or more ints between 0 and "
                                         r"n = 4, got \[2, 5\]"):
        padding_mask([2, 5], 4)
    with pytest.raises(ValueError, match="between 0 and n = 4, got \\[-1\\]"):
        padding_mask([-1], 4)
    with pytest.raises(ValueError, match="one or more ints"):
        padding_mask([], 4)
    with pytest.raises(TypeError, match="lengths must be a 1-D integer tensor .* got a "
                                        "torch.float32 tensor of shape \\(2,\\)"):
        padding_mask(torch.tensor([1.0, 2.0]), 4)
    with pytest.raises(TypeError, match="lengths must be a list of ints .* got \\[1.5\\]"):
        padding_mask([1.5], 4)


def test_left_padding_with_a_causal_mask_gives_queries_that_see_nothing():
    """Left padding (used to batch prompts for generation) and a causal mask leave the
    padding queries without a visible key: the policy gives them zero output, as PyTorch's
    CPU kernel does, where a textbook softmax gives NaN."""
    n, pad = 5, 2
    left_padded = torch.arange(n) >= pad
    mask = combine_masks(causal_mask(n), left_padded)
    assert mask.sum(-1).tolist() == [0, 0, 1, 2, 3]
    q, k, v = randn(n, 4, seed=12), randn(n, 4, seed=13), randn(n, 3, seed=14)
    out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert torch.equal(out[:pad], torch.zeros(pad, 3)) and torch.equal(
        weights[:pad], torch.zeros(pad, n))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    textbook = torch.softmax((q @ k.T / 2).masked_fill(~mask, -math.inf), dim=-1)
    assert textbook[:pad].isnan().all()


def test_combine_masks_is_the_elementwise_and_with_broadcasting():
    causal, padding = causal_mask(4), padding_mask([4, 2], 4)
    combined = combine_masks(causal, None, padding)
    assert combined.shape == (2, 1, 4, 4)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                assert combined[b, 0, i, j] == (bool(causal[i, j]) and bool(padding[b, 0, 0, j]))
    assert combine_masks(None, None) is None
    assert combine_masks(causal) is causal


def test_combine_masks_rejects_non_boolean_and_mismatched_masks():
    with pytest.raises(TypeError, match="masks must be boolean tensors .* got torch.float32 "
                                        "for mask 1"):
        combine_masks(causal_mask(3), torch.zeros(3, 3))
    with pytest.raises(TypeError, match="got list for mask 0"):
        combine_masks([[True]])
    with pytest.raises(ValueError, match=r"masks must broadcast to one shape, got \(3, 3\), "
                                         r"\(4, 4\)"):
        combine_masks(causal_mask(3), causal_mask(4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_to_additive_gives_zero_and_minus_infinity(dtype):
    mask = sliding_window_mask(5, 2)
    additive = to_additive(mask, dtype=dtype)
    assert additive.dtype == dtype
    assert torch.equal(additive == 0, mask) and torch.equal(additive == -math.inf, ~mask)


def test_an_additive_mask_gives_the_same_attention_as_the_boolean_one():
    mask = combine_masks(causal_mask(6), padding_mask([6, 4], 6))
    q, k, v = randn(2, 3, 6, 4, seed=15), randn(2, 3, 6, 4, seed=16), randn(2, 3, 6, 5, seed=17)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for attention in (scaled_dot_product_attention, F.scaled_dot_product_attention):
        got = attention(q, k, v, attn_mask=to_additive(mask, dtype=torch.float64))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_to_additive_rejects_what_is_not_a_boolean_mask():
    with pytest.raises(TypeError, match="mask must be a boolean tensor .* got torch.int64"):
        to_additive(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype, got torch.int32"):
        to_additive(causal_mask(2), dtype=torch.int32)


def test_large_negative_number_is_not_a_mask():
    """Why -inf (chapter 3): with an additive -1e9 a query that may see no key spreads its
    weight evenly over exactly the keys it must not see; with a boolean mask (or -inf)
    attnlib gives it zero weight and a zero output."""
    q, k, v = (randn(n, 4, seed=seed, dtype=torch.float32) for n, seed in ((3, 18), (5, 19),
                                                                            (5, 20)))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False  # query 1 may see no key
    hidden = torch.zeros(3, 5).masked_fill(~mask, -1e9)  # float32: -1e9 + score == -1e9
    _, weights = scaled_dot_product_attention(q, k, v, attn_mask=hidden, return_weights=True)
    torch.testing.assert_close(weights[1], torch.full((5,), 0.2))
    out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert weights[1].abs().max() == 0 and out[1].abs().max() == 0
    assert to_additive(mask, dtype=torch.float16)[1].tolist() == [-math.inf] * 5
