"""The course's Triton kernel: compiled on a CUDA GPU, else in Triton's interpreter on the CPU.

Without Triton these tests are skipped, unless ATTNLIB_REQUIRE_TRITON is set (as
`make test` should), where they fail instead.  bfloat16 is tested on a GPU only: the
interpreter computes bfloat16 `tl.dot` wrongly.
"""

import math
import os
import random

import pytest
import torch
import torch.nn.functional as F

from attnlib import triton_attention as ta
from attnlib.triton_attention import KernelConfig, default_config, triton_attention
from tests.low_precision import assert_as_accurate_as_pytorch

REQUIRED = os.environ.get("ATTNLIB_REQUIRE_TRITON", "") not in ("", "0")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    ta.tl is None and not REQUIRED,
    reason="Triton is not installed (pip install triton; set ATTNLIB_REQUIRE_TRITON=1 to fail)")
on_gpu = pytest.mark.skipif(DEVICE != "cuda" or ta.INTERPRETED, reason="needs a CUDA GPU")
TOLERANCE = {torch.float32: {"atol": 1e-5, "rtol": 1e-5},
             torch.float16: {"atol": 2e-3, "rtol": 1e-3},
             torch.bfloat16: {"atol": 1.6e-2, "rtol": 8e-3}}


def test_triton_is_installed_where_required():
    if REQUIRED:
        assert ta.tl is not None, "ATTNLIB_REQUIRE_TRITON is set but Triton is not installed"


def random_case(seed, dtype):
    """Small random shapes: broadcast leading dims, L != S, ragged blocks, any head dim."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    lead = rng.choice([(), (2,), (2, 3), (1, 2, 2)])
    lead_kv = tuple(1 if rng.random() < 0.4 else n for n in lead)
    n_q, n_k = rng.randint(1, 80), rng.randint(1, 80)
    d_k, d_v = rng.choice([16, 32, 64, 128]), rng.choice([16, 32, 64, 128, 24])
    q = torch.randn(*lead, n_q, d_k, generator=gen)
    k = torch.randn(*lead_kv, n_k, d_k, generator=gen)
    v = torch.randn(*lead_kv, n_k, d_v, generator=gen)
    options = {"is_causal": rng.random() < 0.5, "scale": rng.choice([None, 0.3]),
               "block_q": rng.choice([16, 32]), "block_k": rng.choice([16, 32])}
    return *(t.to(DEVICE, dtype) for t in (q, k, v)), options


def pytorch(q, k, v, is_causal=False, scale=None, **_):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("seed", range(8))
def test_equals_pytorch_over_random_shapes(seed, dtype):
    q, k, v, options = random_case(seed, dtype)
    got = triton_attention(q, k, v, **options)
    assert got.dtype == dtype
    torch.testing.assert_close(got, pytorch(q, k, v, **options), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("n_q", "n_k", "d"), [(200, 200, 64), (130, 70, 128)])
def test_default_blocks_with_ragged_last_blocks(n_q, n_k, d, dtype):
    gen = torch.Generator().manual_seed(d)
    q = torch.randn(1, 2, n_q, d, generator=gen).to(DEVICE, dtype)
    k, v = (torch.randn(1, 2, n_k, d, generator=gen).to(DEVICE, dtype) for _ in range(2))
    for is_causal in (False, True):
        torch.testing.assert_close(triton_attention(q, k, v, is_causal=is_causal),
                                   pytorch(q, k, v, is_causal), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lse_is_float32_log_of_each_rows_normaliser(dtype):
    q, k, v, options = random_case(3, dtype)
    options["is_causal"] = True
    out, lse = triton_attention(q, k, v, return_lse=True, **options)
    scale = options["scale"] or 1 / math.sqrt(q.shape[-1])
    scores = q.double() @ k.double().mT * scale
    hidden = torch.ones(scores.shape[-2:], dtype=torch.bool, device=DEVICE).triu(1)
    expected = torch.logsumexp(scores.masked_fill(hidden, -math.inf), dim=-1)
    assert lse.dtype == torch.float32 and lse.shape == out.shape[:-1]
    torch.testing.assert_close(lse.double(), expected.expand_as(lse), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_float32_gradients_match_pytorch(seed):
    q, k, v, options = random_case(10 + seed, torch.float32)
    grad_out = torch.randn(pytorch(q, k, v).shape, device=DEVICE)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    theirs = [t.clone().requires_grad_() for t in (q, k, v)]
    triton_attention(*ours, **options).backward(grad_out)
    pytorch(*theirs, **options).backward(grad_out)
    for got, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=on_gpu)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("n", "d"), [(1, 16), (2, 32), (17, 64), (128, 16)])
def test_low_precision_is_as_accurate_as_pytorch_against_float64(n, d, is_causal, dtype):
    def attention(q, k, v, is_causal):
        return triton_attention(q, k, v, is_causal=is_causal, block_q=16, block_k=32)

    assert_as_accurate_as_pytorch(attention, n, d, is_causal, dtype, device=DEVICE)


def test_gradient_flows_through_lse():
    q, k, v, options = random_case(20, torch.float32)
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    _, lse = triton_attention(*inputs, return_lse=True, **options)
    lse.sum().backward()
    q64, k64 = (t.double().requires_grad_() for t in (q, k))
    scale = options["scale"] or 1 / math.sqrt(q.shape[-1])
    scores = q64 @ k64.mT * scale
    if options["is_causal"]:
        hidden = torch.ones(scores.shape[-2:], dtype=torch.bool, device=DEVICE).triu(1)
        scores = scores.masked_fill(hidden, -math.inf)
    torch.logsumexp(scores, dim=-1).sum().backward()
    torch.testing.assert_close(inputs[0].grad.double(), q64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(inputs[1].grad.double(), k64.grad, rtol=1e-4, atol=1e-4)
    assert not inputs[2].grad.any()


def test_causal_output_ignores_the_future():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 45, 32, generator=gen).to(DEVICE) for _ in range(3))
    before = triton_attention(q, k, v, is_causal=True, block_q=16, block_k=16)
    k2, v2 = k.clone(), v.clone()
    k2[:, 30:], v2[:, 30:] = 100.0, -100.0  # tokens 30.. change: outputs 0..29 must not
    after = triton_attention(q, k2, v2, is_causal=True, block_q=16, block_k=16)
    assert torch.equal(before[:, :30], after[:, :30])
    assert not torch.allclose(before[:, 30:], after[:, 30:])


def test_causal_never_loads_key_blocks_above_the_diagonal():
    # 32 queries, 96 keys, blocks of 16: no query sees keys 32.. (top-left alignment).
    # Were their blocks loaded, a NaN there would reach the output (0 * NaN = NaN).
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(1, 32, 16, generator=gen).to(DEVICE)
    k, v = (torch.randn(1, 96, 16, generator=gen).to(DEVICE) for _ in range(2))
    k[:, 32:], v[:, 32:] = math.nan, math.nan
    got = triton_attention(q, k, v, is_causal=True, block_q=16, block_k=16)
    expected = pytorch(q, k[:, :32], v[:, :32], is_causal=True)
    torch.testing.assert_close(got, expected, **TOLERANCE[torch.float32])


def test_keys_and_values_shared_by_all_heads_broadcast():
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 33, 16, generator=gen).to(DEVICE)
    k, v = (torch.randn(2, 1, 50, 16, generator=gen).to(DEVICE) for _ in range(2))
    got = triton_attention(q, k, v, block_q=16, block_k=16)
    expected = pytorch(q, k.expand(2, 4, 50, 16), v.expand(2, 4, 50, 16))
    torch.testing.assert_close(got, expected, **TOLERANCE[torch.float32])


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # NumPy, in the interpreter
def test_nan_in_a_query_stays_in_its_row():
    q = torch.randn(1, 20, 16, device=DEVICE)
    q[0, 3, 0] = math.nan
    got = triton_attention(q, torch.randn(1, 20, 16, device=DEVICE),
                           torch.randn(1, 20, 16, device=DEVICE), block_q=16, block_k=16)
    assert torch.isnan(got[0, 3]).all()
    assert torch.isfinite(got[0, torch.arange(20, device=DEVICE) != 3]).all()


def test_empty_sequences_as_flash_attention():
    q = torch.randn(2, 5, 16, device=DEVICE, requires_grad=True)
    out, lse = triton_attention(q, torch.randn(2, 0, 16, device=DEVICE),
                                torch.randn(2, 0, 8, device=DEVICE), return_lse=True)
    assert out.shape == (2, 5, 8) and not out.any() and (lse == -math.inf).all()
    out.sum().backward()
    assert not q.grad.any()
    out = triton_attention(torch.randn(3, 0, 16, device=DEVICE),
                           torch.randn(3, 4, 16, device=DEVICE),
                           torch.randn(3, 4, 8, device=DEVICE), is_causal=True)
    assert out.shape == (3, 0, 8)


@on_gpu
@pytest.mark.parametrize("seed", range(4))
def test_bfloat16_equals_pytorch_on_gpu(seed):
    q, k, v, options = random_case(seed, torch.bfloat16)
    torch.testing.assert_close(triton_attention(q, k, v, **options),
                               pytorch(q, k, v, **options), **TOLERANCE[torch.bfloat16])


# --- the launch settings ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("d", [16, 64, 128])
@pytest.mark.parametrize("shared", [64 * 1024, 164 * 1024, 227 * 1024])
def test_default_config_fits_in_shared_memory(shared, d, dtype):
    config = default_config(d, d, dtype, shared)
    size = torch.empty((), dtype=dtype).element_size()
    needed = size * (config.block_q * d + config.num_stages * config.block_k * 2 * d)
    assert needed <= shared
    assert config.num_warps == (4 if d <= 64 else 8)
    for block in (config.block_q, config.block_k):
        assert block >= 16 and block & (block - 1) == 0


def test_default_config_uses_the_larger_blocks_where_they_fit():
    assert default_config(128, 128, torch.float16, 227 * 1024) == KernelConfig(128, 64, 8, 3)
    assert default_config(128, 128, torch.float16, 64 * 1024) == KernelConfig(64, 32, 8, 3)


# --- errors -----------------------------------------------------------------------------


def Z(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "words"),
    [
        ((Z(4, 16), Z(5, 16), Z(5, 16), Z(4, 5, dtype=torch.bool)), {}, ValueError,
         ["attn_mask must be None"]),
        ((Z(4, 16, dtype=torch.float64),) * 3, {}, TypeError, ["float16", "torch.float64"]),
        ((Z(4, 256), Z(5, 256), Z(5, 16)), {}, ValueError, ["d_k = 256", "128"]),
        ((Z(4, 16), Z(5, 16), Z(5, 16)), {"block_q": 48}, ValueError, ["block_q", "power of two"]),
        ((Z(4, 16), Z(5, 16), Z(5, 16)), {"block_k": 8}, ValueError, [">= 16", "8"]),
        ((Z(4, 16), Z(5, 16), Z(5, 16)), {"num_warps": 0}, ValueError, ["num_warps", ">= 1"]),
        ((Z(4, 16), Z(5, 8), Z(5, 16)), {}, ValueError, ["d_k", "(4, 16)", "(5, 8)"]),
    ],
)
def test_bad_input_names_the_argument(args, kwargs, error, words):
    with pytest.raises(error) as info:
        triton_attention(*args, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.skipif(not ta.INTERPRETED, reason="about the interpreter")
def test_interpreter_refuses_bfloat16_with_the_reason():
    x = Z(4, 16, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16.*GPU only.*interpreter"):
        triton_attention(x, x, x)


def test_missing_triton_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ta, "triton", None)
    with pytest.raises(ImportError, match="pip install triton"):
        triton_attention(Z(4, 16), Z(4, 16), Z(4, 16))


@pytest.mark.skipif(not ta.INTERPRETED, reason="about the interpreter")
def test_old_interpreter_with_new_numpy_says_what_to_install(monkeypatch):
    # Triton 3.6's interpreter turns 1-element arrays into ints, which NumPy 2.4 refuses
    monkeypatch.setattr(ta.triton, "__version__", "3.6.0")
    monkeypatch.setattr(ta.np, "__version__", "2.4.6")
    with pytest.raises(RuntimeError, match=r"triton>=3.7 or numpy<2.4"):
        triton_attention(Z(4, 16), Z(4, 16), Z(4, 16))
