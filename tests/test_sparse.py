"""Sparse attention against dense attention with the same mask, in float64."""

import pytest
import torch
import torch.nn.functional as F

from attnlib.attention import inplace_attention
from attnlib.measure import attention_inputs, counted_flops, peak_memory
from attnlib.sparse import sliding_window_attention
from tests.reference import attention64, band_mask


@pytest.mark.parametrize(("n", "window"), [(1, 1), (9, 1), (9, 2), (9, 3), (12, 4), (7, 20)])
def test_sliding_window_attention_is_attention_with_a_band_mask(n, window):
    gen = torch.Generator().manual_seed(n * 100 + window)
    q, k = (torch.randn(2, 3, n, 5, generator=gen) for _ in range(2))
    v = torch.randn(1, 3, n, 2, generator=gen)  # broadcasts over the batch
    got = sliding_window_attention(q, k, v, window)
    torch.testing.assert_close(got.double(), attention64(q, k, v, band_mask(n, window)).expand(
        2, 3, n, 2), rtol=1e-5, atol=1e-6)


def test_sliding_window_attention_has_the_gradients_of_a_band_masked_attention():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: sliding_window_attention(q, k, v, 3),
                                    (q, k, v))


def test_sliding_window_special_cases():
    q, k, v = attention_inputs(10, 4)
    torch.testing.assert_close(sliding_window_attention(q, k, v, window=1), v)  # itself only
    torch.testing.assert_close(sliding_window_attention(q, k, v, window=10),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert sliding_window_attention(q[..., :0, :], k[..., :0, :], v[..., :0, :], 3).shape == (
        1, 1, 0, 4)


def test_sliding_window_memory_grows_linearly_where_full_attention_grows_quadratically():
    def peak(fn, n):
        q, k, v = attention_inputs(n, 16)
        return peak_memory(lambda: fn(q, k, v))

    def window(q, k, v):
        return sliding_window_attention(q, k, v, 64)

    assert peak(window, 2048) / peak(window, 1024) == pytest.approx(2, rel=0.1)
    assert peak(inplace_attention, 2048) / peak(inplace_attention, 1024) == pytest.approx(
        4, rel=0.1)


def test_sliding_window_rejects_bad_input():
    q, k, v = attention_inputs(6, 4)
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        sliding_window_attention(q, k, v, 0)
    with pytest.raises(TypeError, match="window must be an int, got float"):
        sliding_window_attention(q, k, v, 2.0)
    with pytest.raises(ValueError, match=r"same length N, got q of shape \(1, 1, 5, 4\)"):
        sliding_window_attention(q[..., :5, :], k, v, 2)
    with pytest.raises(TypeError, match="scale must be a number, a 0-d tensor or None, got str"):
        sliding_window_attention(q, k, v, 2, scale="1")




def test_sliding_window_computes_linearly_many_flops():
    def flops(n):
        q, k, v = attention_inputs(n, 8)
        return counted_flops(lambda: sliding_window_attention(q, k, v, 16))

    # each block of 16 queries meets 32 keys: 2 products of N x 32 x 8 multiply-adds
    assert flops(256) == 2 * 2 * 256 * 32 * 8 and flops(512) == 2 * flops(256)
