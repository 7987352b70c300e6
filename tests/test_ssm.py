"""The selective state-space scan: the loop and the parallel scan against the recurrence
written out in float64, causality, gradients through both, and the costs."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnlib import linear_attention as la
from attnlib import ssm
from tests.reference import randn

SCANS = {"sequential": ssm.sequential_scan, "parallel": ssm.parallel_scan}


def unrolled(a, u):
    """h_t = sum_{s <= t} (a_{s+1} ... a_t) u_s, the recurrence unrolled, for (N, m) tensors,
    with plain Python numbers."""
    n, m = u.shape
    h = torch.zeros(n, m, dtype=torch.float64)
    for c in range(m):
        for t in range(n):
            total = 0.0
            for s in range(t + 1):
                decay = math.prod(float(a[r, c]) for r in range(s + 1, t + 1))
                total += decay * float(u[s, c])
            h[t, c] = total
    return h


def decays(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64) * 1.2 - 0.1  # mostly in (0, 1), a few outside


@pytest.mark.parametrize("method", list(SCANS))
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 16, 17])
def test_both_scans_equal_the_unrolled_recurrence(method, n):
    a, u = decays(n, 3, seed=n), randn(n, 3, seed=n + 100)
    torch.testing.assert_close(SCANS[method](a, u), unrolled(a, u), rtol=1e-12, atol=1e-12)


def test_leading_dimensions_and_float32():
    a, u = decays(2, 3, 33, 4, seed=1).float(), randn(2, 3, 33, 4, seed=2, dtype=torch.float32)
    parallel, sequential = ssm.parallel_scan(a, u), ssm.sequential_scan(a, u)
    assert parallel.shape == (2, 3, 33, 4) and parallel.dtype == torch.float32
    torch.testing.assert_close(parallel, sequential, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parallel[1, 2].double(), unrolled(a[1, 2], u[1, 2]),
                               rtol=1e-5, atol=1e-5)


def test_the_combine_rule_composes_two_steps_and_is_associative_not_commutative():
    a1, a2, a3 = (decays(5, seed=s) for s in range(3))
    u1, u2, u3 = (randn(5, seed=s + 10) for s in range(3))
    h = randn(5, seed=20)
    a, u = ssm.scan_combine((a1, u1), (a2, u2))
    torch.testing.assert_close(a * h + u, a2 * (a1 * h + u1) + u2)
    left = ssm.scan_combine(ssm.scan_combine((a1, u1), (a2, u2)), (a3, u3))
    right = ssm.scan_combine((a1, u1), ssm.scan_combine((a2, u2), (a3, u3)))
    for x, y in zip(left, right, strict=True):
        torch.testing.assert_close(x, y)
    swapped = ssm.scan_combine((a2, u2), (a1, u1))
    assert not torch.isclose(swapped[1], u).any()


def test_a_scan_with_another_combine_rule():
    """parallel_scan takes the combine rule as an argument: with (a, u) combined as
    (1, u1 + u2) it is a prefix sum."""
    u = randn(13, 2, seed=3)
    summed = ssm.parallel_scan(torch.ones(13, 2, dtype=torch.float64), u,
                               combine=lambda x, y: (x[0] * y[0], x[1] + y[1]))
    torch.testing.assert_close(summed, u.cumsum(dim=0))


def reference_selective(x, a, b, c):
    """y_t[i] = sum_s c_t[s] h_t[i, s], h_t[i, s] = a_t[i, s] h_{t-1}[i, s] + x_t[i] b_t[s],
    element by element in float64."""
    n, d, d_state = a.shape
    h = torch.zeros(d, d_state, dtype=torch.float64)
    y = torch.zeros(n, d, dtype=torch.float64)
    for t in range(n):
        for i in range(d):
            for s in range(d_state):
                h[i, s] = a[t, i, s] * h[i, s] + x[t, i] * b[t, s]
            y[t, i] = sum(float(c[t, s] * h[i, s]) for s in range(d_state))
    return y


def selective_inputs(n=9, d=3, d_state=4, seed=0, lead=()):
    return (randn(*lead, n, d, seed=seed), decays(*lead, n, d, d_state, seed=seed + 1),
            randn(*lead, n, d_state, seed=seed + 2), randn(*lead, n, d_state, seed=seed + 3))


@pytest.mark.parametrize("method", ssm.METHODS)
def test_selective_scan_equals_the_recurrence_element_by_element(method):
    x, a, b, c = selective_inputs(lead=(2,))
    y = ssm.selective_scan(x, a, b, c, method=method)
    assert y.shape == (2, 9, 3)
    for i in range(2):
        torch.testing.assert_close(y[i], reference_selective(x[i], a[i], b[i], c[i]),
                                   rtol=1e-12, atol=1e-12)


def test_with_no_decay_the_scan_is_linear_attention_without_feature_map_or_normaliser():
    """x = v, b = k, c = q, a = 1: y_t = sum_{s <= t} (q_t . k_s) v_s (Dao & Gu, 2024)."""
    q, k, v = randn(2, 11, 4, seed=1), randn(2, 11, 4, seed=2), randn(2, 11, 3, seed=3)
    y = ssm.selective_scan(v, torch.ones(2, 11, 3, 4, dtype=torch.float64), k, q)
    torch.testing.assert_close(
        y, la.linear_attention(q, k, v, is_causal=True, feature_map=None, normalize=False))
    torch.testing.assert_close(y, ((q @ k.mT).tril()) @ v)


@pytest.mark.parametrize("method", ssm.METHODS)
def test_future_inputs_change_no_earlier_output_bit_for_bit(method):
    x, a, b, c = selective_inputs(n=21, lead=(2,))
    before = ssm.selective_scan(x, a, b, c, method=method)
    later = [t.clone() for t in (x, a, b, c)]
    for t in later:
        t[:, 12:] = t[:, 12:] * 3 - 1
    after = ssm.selective_scan(*later, method=method)
    assert torch.equal(before[:, :12], after[:, :12])
    assert not torch.equal(before[:, 12:], after[:, 12:])


@pytest.mark.parametrize("method", ssm.METHODS)
def test_gradients_through_both_scans(method):
    inputs = [t.requires_grad_() for t in selective_inputs(n=6, d=2, d_state=3)]
    assert torch.autograd.gradcheck(lambda *t: ssm.selective_scan(*t, method=method), inputs)
    a, u = decays(7, 2, seed=5).requires_grad_(), randn(7, 2, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(SCANS[method], (a, u))


def test_the_layer_equals_mambas_formulas_and_both_methods_agree_with_gradients():
    layer = ssm.SelectiveSSM(4, d_state=3, method="parallel", seed=1).double()
    x = randn(2, 10, 4, seed=7)
    with torch.no_grad():
        delta = torch.nn.functional.softplus(x @ layer.to_delta.weight.T + layer.to_delta.bias)
        A = -torch.exp(layer.A_log)
        a = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
        b, c = x @ layer.to_b.weight.T, x @ layer.to_c.weight.T
        expected = torch.stack([reference_selective(delta[i] * x[i], a[i], b[i], c[i])
                                for i in range(2)])
    y = layer(x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert ((a > 0) & (a < 1)).all()
    assert (delta > 0).all()

    grads = {}
    for method in ssm.METHODS:
        layer.method = method
        layer.zero_grad()
        layer(x).pow(2).sum().backward()
        grads[method] = [p.grad.clone() for p in layer.parameters()]
    for g_parallel, g_sequential in zip(grads["parallel"], grads["sequential"], strict=True):
        torch.testing.assert_close(g_parallel, g_sequential, rtol=1e-10, atol=1e-12)


def test_the_layer_starts_as_mamba_does():
    layer = ssm.SelectiveSSM(64, d_state=16, seed=0)
    step = torch.nn.functional.softplus(layer.to_delta.bias.detach())
    assert (step >= 1e-3 * 0.999).all() and (step <= 0.1 * 1.001).all()
    torch.testing.assert_close(-torch.exp(layer.A_log.detach()),
                               -torch.arange(1.0, 17).expand(64, 16))


def test_empty_sequences():
    assert ssm.parallel_scan(torch.zeros(2, 0, 3), torch.zeros(2, 0, 3)).shape == (2, 0, 3)
    assert ssm.sequential_scan(torch.zeros(0, 3), torch.zeros(0, 3)).shape == (0, 3)
    x, a, b, c = (t[..., :0, :] if t.dim() == 2 else t[:0] for t in selective_inputs())
    assert ssm.selective_scan(x, a, b, c).shape == (0, 3)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: ssm.parallel_scan(torch.zeros(3, 2), torch.zeros(3, 3)), ValueError,
     r"a and u must have the same shape \(..., N, m\), got a of shape \(3, 2\)"),
    (lambda: ssm.sequential_scan(torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64)),
     TypeError, "a and u must share a dtype"),
    (lambda: ssm.parallel_scan(torch.zeros(3), torch.zeros(3)), ValueError,
     "a must have at least 2 dimension"),
    (lambda: ssm.selective_scan(torch.zeros(5, 3), torch.zeros(5, 3, 2), torch.zeros(5, 4),
                                torch.zeros(5, 4)), ValueError,
     r"d_state = 4 \(from b\), got a \(5, 3, 2\)"),
    (lambda: ssm.selective_scan(*selective_inputs(), method="fast"), ValueError,
     r"method must be one of \('parallel', 'sequential'\), got 'fast'"),
    (lambda: ssm.SelectiveSSM(4)(torch.zeros(2, 5, 3)), ValueError,
     r"x must have shape \(..., N, d\) with d = 4, got \(2, 5, 3\)"),
    (lambda: ssm.SelectiveSSM(4, d_state=0), ValueError, "d_state must be >= 1"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- costs -----------------------------------------------------------------------------


class ElementwiseAndMatmulFlops(TorchDispatchMode):
    """FLOPs as a call runs them: one per element of each multiplication and addition, two
    per multiply-add of each matrix product."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor):
            self.flops += out.numel()
        elif func == torch.ops.aten.bmm.default:
            self.flops += 2 * out.numel() * args[0].shape[-1]
        return out


@pytest.mark.parametrize("method", ssm.METHODS)
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_scan_flops_are_what_the_scan_runs(method, n):
    x, a, b, c = selective_inputs(n=n, d=3, d_state=4, lead=(2,))
    with ElementwiseAndMatmulFlops() as counted:
        ssm.selective_scan(x, a, b, c, method=method)
    assert counted.flops == ssm.scan_flops(n, 3, 4, batch=2, parallel=method == "parallel")


def test_the_parallel_scan_does_about_n_log_n_work():
    ratio = ssm.scan_flops(2**16, 1, 1, parallel=True) / ssm.scan_flops(2**16, 1, 1)
    assert 3 * 16 / 5 * 0.9 < ratio < 3 * 16 / 5 * 1.1  # 3 log2(n) against 5 per element


def test_memory_formulas():
    x, a, b, c = selective_inputs(n=12, d=3, d_state=4, lead=(2,))
    states = ssm.parallel_scan(a.flatten(-2), (x.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2))
    assert states.numel() * 8 == ssm.scan_bytes(12, 3, 4, batch=2, dtype=torch.float64)
    assert ssm.ssm_state_bytes(3, 4, layers=5, batch=2) == 2 * 5 * 3 * 4 * 2
