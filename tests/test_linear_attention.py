"""Linear attention: three forms of the same numbers, against attention without the
softmax written entry by entry in float64."""

import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from attnlib import cost
from attnlib import linear_attention as la
from tests.reference import randn


def phi64(x):
    """elu(x) + 1 written from its definition."""
    return torch.where(x > 0, x + 1, torch.exp(x))


def reference_attention(q, k, v, mask=None, causal=False, feature=phi64, normalize=True):
    """O_i = sum_j w_ij v_j, w_ij = phi(q_i) . phi(k_j) where query i may see key j, divided
    by sum_j w_ij when normalize (a query that sees no key gets 0), in float64 loops."""
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (t.double().expand(*lead, *t.shape[-2:]) for t in (q, k, v))
    fq, fk = feature(q), feature(k)
    out = torch.zeros(*lead, q.shape[-2], v.shape[-1], dtype=torch.float64)
    for index in itertools.product(*(range(n) for n in lead)):
        for i in range(q.shape[-2]):
            total, weights = 0.0, torch.zeros(v.shape[-1], dtype=torch.float64)
            for j in range(k.shape[-2]):
                allowed = (j <= i) if causal else (mask is None or bool(mask[..., i, j].all()))
                if allowed:
                    w = float((fq[index][i] * fk[index][j]).sum())
                    total += w
                    weights += w * v[index][j]
            out[index][i] = weights / total if normalize and total != 0 else weights
    return out


def identity(x):
    return x


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_the_three_forms_equal_attention_without_softmax_in_float64(causal, normalize):
    q = randn(2, 3, 6, 4, seed=1)
    k = randn(1, 6, 4, seed=2)  # broadcasts over batch and heads
    v = randn(3, 6, 5, seed=3)  # d_v != d_k
    expected = reference_attention(q, k, v, causal=causal, normalize=normalize)
    forms = [la.attention_without_softmax(q, k, v, is_causal=causal, normalize=normalize),
             la.linear_attention(q, k, v, is_causal=causal, normalize=normalize)]
    if causal:
        forms.append(la.linear_attention_recurrent(q, k, v, normalize=normalize))
    for out in forms:
        assert out.shape == (2, 3, 6, 5)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_any_feature_map_and_fewer_queries_than_keys():
    q, k, v = randn(3, 4, seed=1), randn(7, 4, seed=2), randn(7, 2, seed=3)
    for feature in (identity, torch.exp):
        expected = reference_attention(q, k, v, feature=feature)
        torch.testing.assert_close(la.linear_attention(q, k, v, feature_map=feature), expected)
        torch.testing.assert_close(
            la.attention_without_softmax(q, k, v, feature_map=feature), expected)
    torch.testing.assert_close(la.linear_attention(q, k, v, feature_map=None, normalize=False),
                               (q @ k.mT) @ v)


def test_a_boolean_mask_and_a_row_that_sees_nothing():
    q, k, v = randn(2, 5, 3, seed=4), randn(2, 6, 3, seed=5), randn(2, 6, 2, seed=6)
    mask = randn(5, 6, seed=7) > 0
    mask[2] = False
    out = la.attention_without_softmax(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, reference_attention(q, k, v, mask=mask))
    assert torch.equal(out[:, 2], torch.zeros(2, 2, dtype=torch.float64))


def test_float32_agrees_with_float64():
    q, k, v = (randn(2, 40, 8, seed=s, dtype=torch.float32) for s in range(3))
    expected = reference_attention(q, k, v, causal=True)
    for out in (la.linear_attention(q, k, v, is_causal=True),
                la.linear_attention_recurrent(q, k, v)):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_elu_feature_map_is_x_plus_1_above_0_and_exp_below():
    x = torch.linspace(-30, 5, 701, dtype=torch.float64)
    torch.testing.assert_close(la.elu_feature_map(x), phi64(x), rtol=1e-15, atol=0)
    torch.testing.assert_close(la.elu_feature_map(x), torch.nn.functional.elu(x) + 1)
    assert (la.elu_feature_map(x.float()) > 0).all()  # elu(x) + 1 rounds to 0 below -17
    grad = torch.autograd.grad(la.elu_feature_map(x.requires_grad_()).sum(), x)[0]
    torch.testing.assert_close(grad, torch.where(x > 0, 1.0, torch.exp(x)).double())


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
def test_future_tokens_change_no_earlier_output_bit_for_bit(form):
    def run(q, k, v):
        if form == "parallel":
            return la.linear_attention(q, k, v, is_causal=True)
        return la.linear_attention_recurrent(q, k, v)

    q, k, v = (randn(2, 16, 4, seed=s) for s in range(3))
    before = run(q, k, v)
    later = [t.clone() for t in (q, k, v)]
    for t in later:
        t[..., 9:, :] = randn(2, 7, 4, seed=9) * 3
    after = run(*later)
    assert torch.equal(before[..., :9, :], after[..., :9, :])
    assert not torch.equal(before[..., 9:, :], after[..., 9:, :])


def test_steps_carry_the_state_of_the_prefix():
    q, k, v = randn(3, 5, 4, seed=1), randn(3, 5, 4, seed=2), randn(3, 5, 2, seed=3)
    state = torch.zeros(3, 4, 2, dtype=torch.float64)
    normaliser = torch.zeros(3, 4, dtype=torch.float64)
    expected = reference_attention(q, k, v, causal=True)
    for t in range(5):
        out, state, normaliser = la.linear_attention_step(state, normaliser, q[:, t], k[:, t],
                                                           v[:, t])
        torch.testing.assert_close(out, expected[:, t])
    fk = phi64(k)
    torch.testing.assert_close(state, fk.mT @ v)  # sum_j phi(k_j) v_j^T
    torch.testing.assert_close(normaliser, fk.sum(dim=1))


@pytest.mark.parametrize("form", ["causal", "not causal", "recurrent", "quadratic"])
def test_gradients_in_float64(form):
    q, k, v = (randn(5, 3, seed=s).requires_grad_() for s in range(3))
    fn = {"causal": lambda q, k, v: la.linear_attention(q, k, v, is_causal=True),
          "not causal": la.linear_attention,
          "recurrent": la.linear_attention_recurrent,
          "quadratic": lambda q, k, v: la.attention_without_softmax(q, k, v, is_causal=True)}[form]
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_empty_sequences():
    q, v = torch.zeros(2, 0, 3), torch.zeros(2, 0, 4)
    assert la.linear_attention(q, q, v, is_causal=True).shape == (2, 0, 4)
    assert la.linear_attention_recurrent(q, q, v).shape == (2, 0, 4)
    # queries but no keys: nothing to attend to, a zero output (never 0/0)
    out = la.linear_attention(torch.ones(2, 3, 3), q, v)
    assert torch.equal(out, torch.zeros(2, 3, 4))


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda t: la.linear_attention(t(3, 2), t(4, 2), t(4, 2), is_causal=True), ValueError,
     "is causal self-attention: q and k must have the same length N"),
    (lambda t: la.linear_attention_recurrent(t(3, 2), t(4, 2), t(4, 2)), ValueError,
     "same length N"),
    (lambda t: la.attention_without_softmax(t(3, 2), t(3, 2), t(3, 2), attn_mask=t(3, 3)),
     TypeError, "attn_mask must be a boolean"),
    (lambda t: la.attention_without_softmax(t(3, 2), t(3, 2), t(3, 2),
                                            attn_mask=torch.ones(3, 3, dtype=torch.bool),
                                            is_causal=True), ValueError, "not both"),
    (lambda t: la.linear_attention(t(3, 2), t(3, 2), t(3, 2), feature_map="elu"), TypeError,
     "feature_map must be a function"),
    (lambda t: la.linear_attention(t(3, 2), t(3, 3), t(3, 2)), ValueError,
     "same last dimension d_k"),
    (lambda t: la.linear_attention_step(t(3, 2), t(2), t(2), t(2), t(3)), ValueError,
     r"d_k = 2, d_v = 3 \(from k and v\), got q \(2,\), state \(3, 2\)"),
    (lambda t: la.linear_attention_step(t(3, 2), t(3), t(2), t(3), t(2)), ValueError,
     r"expected q, k \(..., d_k\), v \(..., d_v\), state \(..., d_k, d_v\)"),
])
def test_bad_arguments_are_named(call, error, message):
    def t(*shape):
        return torch.zeros(*shape)

    with pytest.raises(error, match=message):
        call(t)


# --- costs -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["causal", "not causal", "recurrent"])
def test_flops_are_what_the_matrix_products_count(form):
    q, k, v = (randn(2, 3, 10, 8, seed=s) for s in range(3))
    fn = {"causal": lambda: la.linear_attention(q, k, v, is_causal=True),
          "not causal": lambda: la.linear_attention(q, k, v),
          "recurrent": lambda: la.linear_attention_recurrent(q, k, v)}[form]
    with FlopCounterMode(display=False) as counter:
        fn()
    assert counter.get_total_flops() == la.linear_attention_flops(10, 8, heads=3, batch=2)


def test_the_quadratic_form_costs_what_attention_costs():
    q, k, v = (randn(2, 12, 5, seed=s) for s in range(3))
    with FlopCounterMode(display=False) as counter:
        la.attention_without_softmax(q, k, v, is_causal=True)
    assert counter.get_total_flops() == cost.attention_flops(12, 5, batch=2)
    # linear attention does less work once n > d
    assert la.linear_attention_flops(64, 64) == cost.attention_flops(64, 64)
    assert la.linear_attention_flops(65, 64) < cost.attention_flops(65, 64)


class LargestResult(TorchDispatchMode):
    """The largest number of elements any operation of a call returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.largest = max(self.largest, out.numel())
        return out


def test_memory_formulas_count_the_largest_tensor_of_each_form():
    n, d = 50, 6
    q, k, v = (randn(2, n, d, seed=s) for s in range(3))
    with LargestResult() as parallel:
        la.linear_attention(q, k, v, is_causal=True)
    assert parallel.largest * 8 == la.linear_prefix_bytes(n, d, batch=2, dtype=torch.float64)
    with LargestResult() as recurrent:
        la.linear_attention_recurrent(q, k, v)
    assert recurrent.largest == 2 * n * d  # the output; the state is 2 * d * d
    assert la.linear_state_bytes(d, batch=2, dtype=torch.float64) == 2 * (d * d + d) * 8
    # generation: a fixed state against a cache that grows
    assert la.linear_state_bytes(128, heads=8) < cost.kv_cache_bytes(65, 128, heads=8)
    assert la.linear_state_bytes(128, heads=8) > cost.kv_cache_bytes(64, 128, heads=8)
    assert math.isclose(la.linear_prefix_bytes(4096, 64) / cost.score_matrix_bytes(
        4096, dtype=torch.float32), 1.0)
