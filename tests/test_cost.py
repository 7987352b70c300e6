import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attnlib import cost
from attnlib.attention import scaled_dot_product_attention
from attnlib.cost import (
    Measurement,
    attention_flops,
    attention_inputs,
    counted_flops,
    cpu_op_times,
    fit_exponent,
    inplace_attention,
    kv_cache_bytes,
    measure,
    page_faults,
    peak_memory,
    projection_flops,
    score_matrix_bytes,
    sliding_window_attention,
)

MB = 1 << 20


def test_peak_memory_counts_live_tensors_not_freed_ones():
    def one_at_a_time():
        for _ in range(3):
            torch.ones(MB)  # 4 MB each, freed at once

    def three_alive():
        kept = [torch.ones(MB) for _ in range(3)]
        return sum(t.sum() for t in kept)

    assert peak_memory(one_at_a_time) == pytest.approx(4 * MB, rel=0.01)
    assert peak_memory(three_alive) == pytest.approx(12 * MB, rel=0.01)


def test_peak_memory_sees_allocations_inside_torch_kernels():
    x = torch.randn(512, 512)
    # x @ x.T allocates its 1 MB result inside the matmul kernel
    assert peak_memory(lambda: x @ x.T) == pytest.approx(512 * 512 * 4, rel=0.01)


def test_peak_memory_prints_nothing(capfd):
    peak_memory(lambda: torch.ones(10) + 1)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_peak_memory_rejects_bad_arguments():
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        peak_memory(3)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'meta'"):
        peak_memory(lambda: None, device="meta")


# --- counting --------------------------------------------------------------------------


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
    batch, heads, layers, n, head_dim = 2, 3, 4, 5, 8
    k = v = torch.zeros(batch, heads, n, head_dim, dtype=torch.float16)
    assert kv_cache_bytes(n, head_dim, heads, layers, batch) == layers * (k.nbytes + v.nbytes)
    assert kv_cache_bytes(2 * n, head_dim, dtype=torch.float32) == 2 * kv_cache_bytes(
        n, head_dim, dtype=torch.float32)


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
        (lambda: kv_cache_bytes(4, head_dim=-8), ValueError, "head_dim must be >= 1, got -8"),
        (lambda: kv_cache_bytes(4, 8, dtype=np.float16), TypeError,
         "dtype must be a torch dtype"),
    ],
)
def test_counting_rejects_bad_input_with_a_clear_message(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


# --- the two attention variants --------------------------------------------------------


def attention_cases():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    bool_mask = torch.rand(9, 9, generator=gen) < 0.5
    bool_mask[4] = False  # a query that sees no key
    return q, k, v, [{}, {"is_causal": True}, {"attn_mask": bool_mask},
                     {"attn_mask": torch.randn(3, 9, 9, generator=gen, dtype=torch.float64)},
                     {"scale": 0.3}]


def test_inplace_attention_computes_chapter_2s_attention():
    q, k, v, options = attention_cases()
    for kwargs in options:
        expected = scaled_dot_product_attention(q, k, v, **kwargs)
        torch.testing.assert_close(inplace_attention(q, k, v, **kwargs), expected)
    with_mask = options[2]
    assert inplace_attention(q, k, v, **with_mask)[:, :, 4].abs().max() == 0  # not NaN
    torch.testing.assert_close(inplace_attention(q, k[..., :0, :], v[..., :0, :]),
                               torch.zeros_like(q))
    assert torch.isnan(inplace_attention(q * math.nan, k, v)).all()


def test_inplace_attention_refuses_autograd_but_runs_without_it():
    q, k, v = attention_inputs(5, 4)
    q.requires_grad_()
    with pytest.raises(ValueError, match="cannot backpropagate.*torch.no_grad"):
        inplace_attention(q, k, v)
    with torch.no_grad():
        torch.testing.assert_close(inplace_attention(q, k, v), F.scaled_dot_product_attention(
            q, k, v))


def band_attention_reference(q, k, v, window):
    """Full softmax attention in float64 where query i sees keys j with 0 <= i - j < window,
    the mask built entry by entry."""
    n = q.shape[-2]
    mask = torch.tensor([[0 <= i - j < window for j in range(n)] for i in range(n)])
    scores = q.double() @ k.double().mT / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1) @ v.double()


@pytest.mark.parametrize(("n", "window"), [(1, 1), (9, 1), (9, 2), (9, 3), (12, 4), (7, 20)])
def test_sliding_window_attention_is_attention_with_a_band_mask(n, window):
    gen = torch.Generator().manual_seed(n * 100 + window)
    q, k = (torch.randn(2, 3, n, 5, generator=gen) for _ in range(2))
    v = torch.randn(1, 3, n, 2, generator=gen)  # broadcasts over the batch
    got = sliding_window_attention(q, k, v, window)
    torch.testing.assert_close(got.double(), band_attention_reference(q, k, v, window).expand(
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
    with pytest.raises(TypeError, match="scale must be a number or None, got str"):
        sliding_window_attention(q, k, v, 2, scale="1")


# --- measuring -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2048, 4096])
def test_measured_peak_of_naive_attention_agrees_with_score_matrix_bytes(n):
    """The claim of chapter 5: a naive attention's peak is a whole number of N x N matrices,
    within 15% (the rest is the output and a few vectors of length N)."""
    q, k, v = attention_inputs(n, 64)
    matrix = score_matrix_bytes(n, dtype=torch.float32)
    # chapter 2's version keeps scores S, exp(S - max) and A alive together during softmax
    chapter2 = peak_memory(lambda: scaled_dot_product_attention(q, k, v))
    assert chapter2 / (3 * matrix) == pytest.approx(1, rel=0.15)
    assert peak_memory(lambda: inplace_attention(q, k, v)) / matrix == pytest.approx(1, rel=0.15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measured_peak_on_cuda_agrees_with_score_matrix_bytes():
    n = 4096
    q, k, v = attention_inputs(n, 64, device="cuda")
    matrix = score_matrix_bytes(n, dtype=torch.float32)
    peak = peak_memory(lambda: inplace_attention(q, k, v), "cuda")
    assert peak / matrix == pytest.approx(1, rel=0.15)


def test_attention_inputs_are_seeded_and_shaped():
    q, k, v = attention_inputs(5, 3, heads=2, batch=4, dtype=torch.float64)
    assert q.shape == k.shape == v.shape == (4, 2, 5, 3) and q.dtype == torch.float64
    assert not torch.equal(q, k)
    assert torch.equal(attention_inputs(5, 3, 2, 4, torch.float64)[2], v)
    assert not torch.equal(attention_inputs(5, 3, 2, 4, torch.float64, seed=1)[2], v)
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype"):
        attention_inputs(5, dtype=torch.int64)


def test_measure_reports_each_size_with_its_peak_memory():
    def make_square(n):
        return torch.ones(n)

    def outer(x):
        return x[:, None] * x  # one n x n float32 result

    results = measure(outer, [64, 128], make_square, min_run_time=0.01)
    assert [r.n for r in results] == [64, 128]
    assert all(isinstance(r, Measurement) and 0 < r.seconds < 1 for r in results)
    assert [r.peak_bytes for r in results] == [64 * 64 * 4, 128 * 128 * 4]
    assert measure(outer, [8], make_square, memory=False, min_run_time=0.01)[0].peak_bytes is None


def test_measure_shows_a_progress_bar_only_in_a_notebook(capfd, monkeypatch):
    measure(torch.relu, [4, 8], lambda n: torch.ones(n), min_run_time=0.01)
    assert capfd.readouterr() == ("", "")  # nothing on stdout or stderr outside a notebook
    shown = []
    monkeypatch.setattr(cost, "_in_notebook", lambda: True)
    monkeypatch.setattr("IPython.display.display", shown.append)
    measure(torch.relu, [4, 8], lambda n: torch.ones(n), min_run_time=0.01, label="relu")
    (bar,) = shown
    assert (bar.value, bar.max, bar.description) == (2, 2, "relu: measured 2 sizes")
    measure(torch.relu, [4], lambda n: torch.ones(n), min_run_time=0.01, progress=False)
    assert len(shown) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"fn": 3}, TypeError, "fn must be callable, got int"),
        ({"sizes": []}, ValueError, "sizes must hold at least one size, got none"),
        ({"sizes": [8, 0]}, ValueError, "each size must be >= 1, got 0"),
        ({"sizes": ["8"]}, TypeError, "each size must be an int, got str"),
        ({"make_inputs": None}, TypeError, "make_inputs must be callable, got NoneType"),
        ({"min_run_time": 0}, ValueError, "min_run_time must be a number of seconds > 0, got 0"),
        ({"max_run_time": "1"}, ValueError, "max_run_time must be a number of seconds > 0"),
    ],
)
def test_measure_rejects_bad_input(kwargs, error, message):
    arguments = {"fn": torch.relu, "sizes": [8], "make_inputs": attention_inputs, **kwargs}
    with pytest.raises(error) as info:
        measure(arguments.pop("fn"), arguments.pop("sizes"), **arguments)
    assert message in str(info.value)


def test_fit_exponent_recovers_a_power_law_and_matches_numpys_fit():
    sizes = [100, 200, 400, 800, 1600]
    assert fit_exponent(sizes, [3e-9 * n**2.5 for n in sizes]) == pytest.approx(2.5, rel=1e-12)
    rng = np.random.default_rng(0)
    noisy = [n**2 * rng.uniform(0.8, 1.25) for n in sizes]
    slope = np.polyfit(np.log10(sizes), np.log10(noisy), 1)[0]
    assert fit_exponent(sizes, noisy) == pytest.approx(slope, rel=1e-10)


@pytest.mark.parametrize(
    ("sizes", "values", "message"),
    [
        ([1, 2], [1], "same length >= 2, got lengths 2 and 1"),
        ([4], [1], "same length >= 2, got lengths 1 and 1"),
        ([1, 2], [0, 1], "must all be > 0"),
        ([3, 3], [1, 2], "sizes must not all be equal, got [3, 3]"),
    ],
)
def test_fit_exponent_rejects_what_it_cannot_fit(sizes, values, message):
    with pytest.raises(ValueError) as info:
        fit_exponent(sizes, values)
    assert message in str(info.value)


def test_cpu_op_times_names_the_operators_that_did_the_work(capfd):
    a = torch.randn(300, 300)
    matmul = cpu_op_times(lambda: a @ a)
    assert next(iter(matmul)) == "aten::mm"  # the largest entry comes first
    exp = cpu_op_times(lambda: a.exp(), runs=2)
    assert "aten::exp" in exp and "aten::mm" not in exp
    assert all(t > 0 for t in exp.values())
    assert capfd.readouterr() == ("", "")
    with pytest.raises(ValueError, match="runs must be >= 1, got 0"):
        cpu_op_times(lambda: None, runs=0)
    with pytest.raises(TypeError, match="fn must be callable, got str"):
        cpu_op_times("a @ a")


def test_main_prints_the_exponent_and_the_memory_agreement(capsys):
    cost.main(sizes=(64, 128))
    out = capsys.readouterr().out
    assert "N =    128:" in out and "x (3 * score_matrix_bytes)" in out
    assert "time grows like N^" in out and "over N = 64, 128" in out


def test_counted_flops_counts_each_matrix_product_as_it_runs():
    a, b, c = torch.randn(3, 5), torch.randn(5, 7), torch.randn(7, 2)
    # (3 x 5) @ (5 x 7): 3 * 7 dot products of length 5; then (3 x 7) @ (7 x 2)
    assert counted_flops(lambda: a @ b @ c) == 2 * (3 * 7 * 5 + 3 * 2 * 7)
    assert counted_flops(lambda: (a @ b).softmax(-1)) == 2 * 3 * 7 * 5  # softmax not counted
    with pytest.raises(TypeError, match="fn must be callable, got Tensor"):
        counted_flops(a)


def test_sliding_window_computes_linearly_many_flops():
    def flops(n):
        q, k, v = attention_inputs(n, 8)
        return counted_flops(lambda: sliding_window_attention(q, k, v, 16))

    # each block of 16 queries meets 32 keys: 2 products of N x 32 x 8 multiply-adds
    assert flops(256) == 2 * 2 * 256 * 32 * 8 and flops(512) == 2 * flops(256)


def transparent_huge_pages_always():
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or transparent_huge_pages_always(),
                    reason="counts 4 KiB pages as Linux without always-on huge pages gives them")
def test_page_faults_count_the_pages_of_memory_fresh_from_the_os():
    import resource

    n_bytes = 64 * MB  # above glibc's largest mmap threshold (32 MiB): mapped afresh each call
    pages = n_bytes // resource.getpagesize()
    fresh = page_faults(lambda: torch.ones(n_bytes // 4))
    assert fresh.page_bytes == resource.getpagesize()
    assert pages <= fresh.faults <= pages * 1.05
    buffer = torch.empty(n_bytes // 4)
    reused = page_faults(lambda: buffer.fill_(1.0), runs=2)
    assert reused.faults < pages / 100
    for counts in (fresh, reused):
        assert 0 <= counts.kernel_seconds <= counts.cpu_seconds


def test_page_faults_is_none_without_the_resource_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: import fails
    assert page_faults(lambda: None) is None


def test_page_faults_rejects_bad_arguments():
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        page_faults(3)
    with pytest.raises(ValueError, match="runs must be >= 1, got 0"):
        page_faults(lambda: None, runs=0)
