"""The counting formulas of chapter 5 against independent counts: brute-force loops,
PyTorch's own FlopCounterMode, and the sizes of real tensors."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnlib.attention import scaled_dot_product_attention
from attnlib.cost import attention_flops, kv_cache_bytes, projection_flops, score_matrix_bytes
from attnlib.measure import attention_inputs


def test_attention_flops_counts_the_two_matrix_products():
    n, d = 6, 4
    # count multiply-adds by brute force: Q K^T has n*n dot products of length d, A V too
    multiply_adds = sum(1 for _ in range(n) for _ in range(n) for _ in range(d)) * 2
    assert attention_flops(n, d) == 2 * multiply_adds
    assert attention_flops(n, d, heads=8, batch=3) == 24 * attention_flops(n, d)
    assert attention_flops(n, d, causal=True) == attention_flops(n, d) // 2
    with pytest.raises(ValueError, match="n must be >= 1, got -5"):
        attention_flops(-5, 4)
    with pytest.raises(TypeError, match="d must be an int, got float"):
        attention_flops(5, 4.0)


def flop_counter(fn, *args):
    """FLOPs of the matrix products fn runs, as PyTorch's own FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize(("batch", "heads", "n", "d"), [(1, 1, 7, 3), (2, 4, 16, 8)])
def test_attention_flops_agree_with_pytorchs_flop_counter(batch, heads, n, d):
    q, k, v = attention_inputs(n, d, heads, batch)
    assert attention_flops(n, d, heads, batch) == flop_counter(
        scaled_dot_product_attention, q, k, v)


def test_projection_flops_agree_with_pytorchs_flop_counter_on_four_linear_layers():
    batch, n, d_model = 2, 10, 12
    layers = [torch.nn.Linear(d_model, d_model, bias=False) for _ in "QKVO"]
    x = torch.randn(batch, n, d_model)
    assert projection_flops(n, d_model, batch) == flop_counter(
        lambda: [layer(x) for layer in layers])
    with pytest.raises(ValueError, match="d_model must be >= 1, got 0"):
        projection_flops(4, 0)


def test_attention_overtakes_the_projections_at_twice_the_model_width():
    d_model, heads = 512, 8
    d = d_model // heads
    for n in (256, 1023):
        assert attention_flops(n, d, heads) < projection_flops(n, d_model)
    assert attention_flops(2 * d_model, d, heads) == projection_flops(2 * d_model, d_model)
    assert attention_flops(1025, d, heads) > projection_flops(1025, d_model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_score_matrix_bytes_is_the_size_of_the_materialised_matrices(dtype):
    batch, heads, layers, n = 2, 3, 4, 5
    one_layer = torch.zeros(batch, heads, n, n, dtype=dtype)
    expected = layers * one_layer.numel() * one_layer.element_size()
    assert score_matrix_bytes(n, heads, layers, batch, dtype) == expected
    assert score_matrix_bytes(2 * n, dtype=dtype) == 4 * score_matrix_bytes(n, dtype=dtype)


def test_kv_cache_bytes_is_the_size_of_the_stored_keys_and_values():
    batch, heads, layers, n, d = 2, 3, 4, 5, 8
    k = v = torch.zeros(batch, heads, n, d, dtype=torch.float16)
    assert kv_cache_bytes(n, d, heads, layers, batch) == layers * (k.nbytes + v.nbytes)
    assert kv_cache_bytes(2 * n, d, dtype=torch.float32) == 2 * kv_cache_bytes(
        n, d, dtype=torch.float32)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: score_matrix_bytes(-1), ValueError, "n must be >= 1, got -1"),
        (lambda: score_matrix_bytes(4, heads=0), ValueError, "heads must be >= 1, got 0"),
        (lambda: score_matrix_bytes(4, layers=2.0), TypeError, "layers must be an int, got float"),
        (lambda: score_matrix_bytes(4, dtype="float16"), TypeError,
         "dtype must be a torch dtype such as torch.float16, got str 'float16'"),
        (lambda: score_matrix_bytes(4, dtype=torch.int8), TypeError,
         "dtype must be a floating-point dtype such as torch.float16, got torch.int8"),
        (lambda: kv_cache_bytes(4, d=-8), ValueError, "d must be >= 1, got -8"),
        (lambda: kv_cache_bytes(4, 8, dtype=np.float16), TypeError,
         "dtype must be a torch dtype"),
    ],
)
def test_counting_rejects_bad_input_with_a_clear_message(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


