import math

import pytest
import torch
import torch.nn.functional as F

from attnlib.attention import (
    STATS_BATCH,
    VANISHING_GRADIENT,
    attention_scores,
    dot_product_variance,
    inplace_attention,
    random_attention_stats,
    row_entropy,
    scaled_dot_product_attention,
    softmax,
)
from tests.reference import attention64, random_qkv, weights64
from tests.reference import randn as randn64

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def random_case(seed, dtype):
    """Random shapes (`random_qkv`) and a mask kind: none, boolean, float, causal, or a
    boolean mask that broadcasts."""
    q, k, v, rng = random_qkv(seed, dtype)
    gen = torch.Generator().manual_seed(seed)
    (n_q, n_k), lead = (q.shape[-2], k.shape[-2]), q.shape[:-2]
    kind = rng.choice(["none", "bool", "float", "causal", "bool-broadcast"])
    mask, causal = None, kind == "causal"
    if kind in ("bool", "bool-broadcast"):
        shape = (*lead, n_q, n_k) if kind == "bool" else (1, n_k)
        mask = torch.rand(shape, generator=gen) < 0.7
        mask[..., 0] = True  # every query sees a key: PyTorch's math differs on empty rows
    elif kind == "float":
        mask = torch.randn(n_q, n_k, generator=gen, dtype=dtype)
    return q, k, v, mask, causal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(40))
def test_matches_pytorch_sdpa(seed, dtype):
    q, k, v, mask, causal = random_case(seed, dtype)
    scale = None if seed % 3 else 0.3
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=scale)
    got = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("seed", range(10))
def test_returned_weights_are_the_softmax_of_the_scores(seed):
    q, k, v, mask, causal = random_case(seed, torch.float64)
    out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                return_weights=True)
    expected = weights64(q, k, mask, causal)
    torch.testing.assert_close(weights, expected.expand_as(weights), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=torch.float64))
    torch.testing.assert_close(out, weights @ v)


def test_causal_top_left_alignment_when_lengths_differ():
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen), torch.randn(
        5, 2, generator=gen)
    _, weights = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    # query i sees keys 0..i, counted from the first key, as PyTorch's is_causal does
    assert (weights > 0).tolist() == [[True, False, False, False, False],
                                      [True, True, False, False, False],
                                      [True, True, True, False, False]]
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True), expected)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_pytorch(causal):
    gen = torch.Generator().manual_seed(3)
    shapes = [(2, 3, 6, 8), (2, 3, 7, 8), (2, 3, 7, 5)]
    tensors = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    mask = None if causal else torch.randn(6, 7, generator=gen, dtype=torch.float64)
    ours = [t.clone().requires_grad_() for t in tensors]
    theirs = [t.clone().requires_grad_() for t in tensors]
    grad_out = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    scaled_dot_product_attention(*ours, attn_mask=mask, is_causal=causal).backward(grad_out)
    F.scaled_dot_product_attention(*theirs, attn_mask=mask, is_causal=causal).backward(grad_out)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_gradcheck_through_a_partly_masked_row():
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    mask = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(
        lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v))


def test_softmax_is_stable_for_huge_logits_and_matches_torch():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [1000.0, 0.0, -1000.0]], dtype=torch.float32)
    got = softmax(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.softmax(x.double(), -1).float())
    naive = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    assert torch.isnan(naive).any()  # what the max subtraction prevents


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_along_any_dim_matches_torch(dim):
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(softmax(x, dim), torch.softmax(x, dim), rtol=1e-14, atol=1e-14)


def test_softmax_of_an_all_minus_infinity_row_is_zero_with_zero_gradient():
    x = torch.tensor([[0.0, -math.inf], [-math.inf, -math.inf]], requires_grad=True)
    y = softmax(x)
    assert y.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert torch.isnan(torch.softmax(x.detach(), -1)[1]).all()  # torch's own gives NaN
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_a_query_that_sees_no_key_gets_zero_output_not_nan():
    gen = torch.Generator().manual_seed(6)
    q, k, v = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen), torch.randn(
        3, 2, generator=gen)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])
    out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert out[1].tolist() == [0.0, 0.0] and weights[1].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_empty_sequences():
    q, k, v = torch.randn(2, 4), torch.randn(0, 4), torch.randn(0, 3)
    assert scaled_dot_product_attention(q, k, v).tolist() == [[0.0] * 3] * 2
    assert scaled_dot_product_attention(torch.randn(0, 4), torch.randn(2, 4),
                                        torch.randn(2, 3)).shape == (0, 3)


def test_nan_input_propagates():
    q = torch.tensor([[float("nan"), 0.0]])
    assert torch.isnan(scaled_dot_product_attention(q, torch.ones(2, 2), torch.ones(2, 2))).all()


def test_scores_default_scale_is_one_over_sqrt_dk():
    gen = torch.Generator().manual_seed(7)
    q, k = torch.randn(3, 16, generator=gen), torch.randn(5, 16, generator=gen)
    torch.testing.assert_close(attention_scores(q, k), torch.einsum("id,jd->ij", q, k) / 4)
    torch.testing.assert_close(attention_scores(q, k, scale=1.0), torch.einsum("id,jd->ij", q, k))


def test_bool_and_additive_masks_agree():
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 4, 3, generator=gen) for _ in range(3))
    mask = torch.rand(2, 4, 4, generator=gen) < 0.6
    mask[..., 0] = True
    additive = torch.zeros(2, 4, 4).masked_fill(~mask, -math.inf)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               scaled_dot_product_attention(q, k, v, attn_mask=additive))


Z = torch.zeros


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "words"),
    [
        ((Z(4, 8), Z(5, 6), Z(5, 6)), {}, ValueError, ["d_k", "(4, 8)", "(5, 6)"]),
        ((Z(4, 8), Z(5, 8), Z(6, 3)), {}, ValueError, ["k and v", "(5, 8)", "(6, 3)"]),
        ((Z(4, 8), Z(5, 8), Z(5, 3)), {"attn_mask": Z(3, 5, dtype=torch.bool)}, ValueError,
         ["attn_mask of shape (3, 5)", "(4, 5)"]),
        ((Z(4, 8, dtype=torch.int64), Z(5, 8), Z(5, 3)), {}, TypeError, ["q", "torch.int64"]),
        ((Z(4, 8), Z(5, 8), Z(5, 3, dtype=torch.float64)), {}, TypeError, ["dtype", "float64"]),
        ((Z(4, 8), Z(5, 8), Z(5, 3)), {"attn_mask": Z(4, 5, dtype=torch.int32)}, TypeError,
         ["attn_mask", "torch.int32"]),
        ((Z(2, 4, 8), Z(3, 5, 8), Z(3, 5, 3)), {}, ValueError, ["broadcast", "q (2, 4, 8)"]),
        ((Z(8), Z(5, 8), Z(5, 3)), {}, ValueError, ["q", "at least 2"]),
        ((Z(4, 8), Z(5, 8), Z(5, 3)), {"is_causal": True, "attn_mask": Z(4, 5)}, ValueError,
         ["not both"]),
        ((Z(4, 8), Z(5, 8), Z(5, 3)), {"scale": "0.5"}, TypeError, ["scale", "str"]),
        ((Z(4, 8), Z(5, 8), Z(5, 3)), {"scale": Z(2)}, TypeError, ["scale", "shape (2,)"]),
    ],
)
def test_bad_input_names_the_argument_and_shapes(args, kwargs, error, words):
    with pytest.raises(error) as info:
        scaled_dot_product_attention(*args, **kwargs)
    for word in words:
        assert word in str(info.value)


# --- where PyTorch is lenient, attnlib is too ------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_float32_mask_with_half_precision_queries_is_cast_as_pytorch_does(dtype):
    q, k, v, _ = random_qkv(11, dtype)
    mask = torch.randn(q.shape[-2], k.shape[-2], generator=torch.Generator().manual_seed(1))
    got = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert got.dtype == dtype
    exact = attention64(q, k, v, mask)  # the mask added in float64: the intended result
    error = (got.double() - exact).abs().max()
    pytorch_error = (F.scaled_dot_product_attention(q, k, v, attn_mask=mask).double()
                     - exact).abs().max()
    assert error <= 4 * pytorch_error + 1e-3, (error, pytorch_error)


def test_scale_may_be_a_zero_dimensional_tensor_as_in_pytorch():
    q, k, v, _ = random_qkv(12, torch.float64)
    scale = torch.tensor(0.7, dtype=torch.float64)
    expected = F.scaled_dot_product_attention(q, k, v, scale=scale)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, scale=scale), expected)
    torch.testing.assert_close(inplace_attention(q, k, v, scale=scale), expected)


def test_zero_width_queries_and_keys_average_the_values_as_pytorch_does():
    q, k = torch.zeros(2, 3, 0, dtype=torch.float64), torch.zeros(2, 5, 0, dtype=torch.float64)
    v = randn64(2, 5, 4)
    expected = v.mean(dim=-2, keepdim=True).expand(2, 3, 4)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), expected)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), expected)
    torch.testing.assert_close(inplace_attention(q, k, v), expected)


# --- in place: one N x N matrix ----------------------------------------------------------


def inplace_cases():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    v = v[..., :3]  # d_v != d_k
    bool_mask = torch.rand(9, 9, generator=gen) < 0.5
    bool_mask[4] = False  # a query that sees no key
    return q, k, v, [{}, {"is_causal": True}, {"mask": bool_mask},
                     {"mask": torch.randn(3, 9, 9, generator=gen, dtype=torch.float64)},
                     {"scale": 0.3}]


def test_inplace_attention_is_textbook_attention():
    q, k, v, options = inplace_cases()
    for kwargs in options:
        expected = torch.nan_to_num(attention64(q, k, v, **kwargs))  # no key: 0, not NaN
        ours = {("attn_mask" if key == "mask" else key): value for key, value in kwargs.items()}
        torch.testing.assert_close(inplace_attention(q, k, v, **ours), expected)
    torch.testing.assert_close(inplace_attention(q, k[..., :0, :], v[..., :0, :]),
                               torch.zeros_like(q[..., :3]))
    assert torch.isnan(inplace_attention(q * math.nan, k, v)).all()


def test_inplace_attention_refuses_autograd_but_runs_without_it():
    q, k, v, _ = inplace_cases()
    q.requires_grad_()
    with pytest.raises(ValueError, match="cannot backpropagate.*torch.no_grad"):
        inplace_attention(q, k, v)
    with torch.no_grad():
        torch.testing.assert_close(inplace_attention(q, k, v), attention64(q, k, v))


# --- the chapter 2 experiments ---------------------------------------------------------

def test_row_entropy_matches_the_definition():
    gen = torch.Generator().manual_seed(9)
    weights = torch.softmax(torch.randn(5, 7, generator=gen, dtype=torch.float64), -1)
    expected = [-sum(p * math.log(p) for p in row) for row in weights.tolist()]
    torch.testing.assert_close(row_entropy(weights), torch.tensor(expected, dtype=torch.float64))
    uniform_and_one_hot = torch.tensor([[0.25] * 4, [0.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(row_entropy(uniform_and_one_hot), torch.tensor([math.log(4), 0.0]))


@pytest.mark.parametrize("d_k", [1, 16, 256])
def test_dot_product_variance_is_d_k(d_k):
    assert dot_product_variance(d_k) == pytest.approx(d_k, rel=0.05)


@pytest.mark.parametrize(("scaled", "temperature"), [(False, 1.0), (True, 1.0), (False, 3.0),
                                                     (True, 0.1)])
def test_attention_stats_gradient_is_the_softmax_jacobian_product(scaled, temperature):
    d_k, n, batch, seed = 32, 6, 4, 3
    stats = random_attention_stats(d_k, n=n, scaled=scaled, temperature=temperature,
                                   batch=batch, seed=seed)
    gen = torch.Generator().manual_seed(seed)  # the same draws, in the same order
    q = torch.randn(batch, n, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, n, d_k, generator=gen, dtype=torch.float64)
    g = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    z = q @ k.mT / (math.sqrt(d_k) if scaled else 1.0) / temperature  # what the softmax gets
    a = torch.softmax(z, -1)
    # dL/dz = (diag(a) - a a^T) g for each row: the softmax Jacobian, written out
    jacobian = torch.diag_embed(a) - a.unsqueeze(-1) * a.unsqueeze(-2)
    grad = (jacobian @ g.unsqueeze(-1)).squeeze(-1)
    assert stats["grad_norm"] == pytest.approx(grad.norm(dim=-1).median().item(), rel=1e-9)
    assert stats["entropy"] == pytest.approx(row_entropy(a).mean().item(), rel=1e-9)
    vanished = (grad.norm(dim=-1) < VANISHING_GRADIENT).double().mean().item()
    assert stats["vanishing"] == pytest.approx(vanished, rel=1e-12)


@pytest.mark.parametrize("d_k", [4, 64, 1024])
def test_unscaled_scores_at_temperature_sqrt_dk_measure_as_scaled_ones(d_k):
    """softmax(Q K^T / sqrt(d_k)) is the same computation whether the 1/sqrt(d_k) is
    called the scale or the temperature: the same weights and the same gradient."""
    scaled = random_attention_stats(d_k, n=8)
    tempered = random_attention_stats(d_k, n=8, scaled=False, temperature=math.sqrt(d_k))
    for key in ("entropy", "grad_norm", "vanishing"):
        assert tempered[key] == pytest.approx(scaled[key], rel=1e-9, abs=1e-12), key


def test_attention_stats_default_batch_is_the_documented_constant():
    assert random_attention_stats(8) == random_attention_stats(8, batch=STATS_BATCH)
    assert random_attention_stats(8) != random_attention_stats(8, batch=STATS_BATCH + 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [({"temperature": 0.0}, ValueError, ["temperature", "positive", "0.0"]),
     ({"temperature": -2.0}, ValueError, ["temperature", "-2.0"]),
     ({"temperature": math.nan}, ValueError, ["temperature", "nan"]),
     ({"temperature": math.inf}, ValueError, ["temperature", "inf"]),
     ({"temperature": "hot"}, TypeError, ["temperature", "str"]),
     ({"n": 0}, ValueError, ["n must be >= 1", "0"]),
     ({"batch": 2.0}, TypeError, ["batch", "float"])],
)
def test_attention_stats_reject_bad_settings_naming_them(kwargs, error, words):
    with pytest.raises(error) as info:
        random_attention_stats(8, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_scaling_keeps_attention_soft_and_gradients_alive():
    small, large = (random_attention_stats(d) for d in (4, 1024))
    small_raw, large_raw = (random_attention_stats(d, scaled=False) for d in (4, 1024))
    assert abs(small["entropy"] - large["entropy"]) < 0.1  # scaled: unchanged with d_k
    assert large_raw["entropy"] < 0.2 * small_raw["entropy"]  # unscaled: collapses
    assert large_raw["grad_norm"] < 1e-3 * large["grad_norm"]
    assert large_raw["vanishing"] > 0.5 and large["vanishing"] == 0.0
    hot = random_attention_stats(64, temperature=1e6)
    assert hot["entropy"] == pytest.approx(math.log(16), rel=1e-4)  # T -> inf: uniform
