"""The measuring module: each function against what it claims to measure, on cases whose
answer is known (tensors of known size, power laws, operators that must appear)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlib import measure
from attnlib.attention import inplace_attention, scaled_dot_product_attention
from attnlib.cost import score_matrix_bytes
from attnlib.measure import (
    Measurement,
    Timing,
    attention_inputs,
    counted_flops,
    cpu_op_times,
    fit_exponent,
    page_faults,
    peak_memory,
    time_call,
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

    results = measure.measure(outer, [64, 128], make_square, min_run_time=0.01)
    assert [r.n for r in results] == [64, 128]
    assert all(isinstance(r, Measurement) and r.seconds > 0 and r.spread >= 0 for r in results)
    assert [r.peak_bytes for r in results] == [64 * 64 * 4, 128 * 128 * 4]
    unmeasured = measure.measure(outer, [8], make_square, memory=False, min_run_time=0.01)
    assert unmeasured[0].peak_bytes is None


def test_measure_shows_a_progress_bar_only_in_a_notebook(capfd, monkeypatch):
    measure.measure(torch.relu, [4, 8], lambda n: torch.ones(n), min_run_time=0.01)
    assert capfd.readouterr() == ("", "")  # nothing on stdout or stderr outside a notebook
    shown = []
    monkeypatch.setattr(measure, "_in_notebook", lambda: True)
    monkeypatch.setattr("IPython.display.display", shown.append)
    measure.measure(torch.relu, [4, 8], lambda n: torch.ones(n), min_run_time=0.01, label="relu")
    (bar,) = shown
    assert (bar.value, bar.max, bar.description) == (2, 2, "relu: measured 2 sizes")
    measure.measure(torch.relu, [4], lambda n: torch.ones(n), min_run_time=0.01, progress=False)
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
        measure.measure(arguments.pop("fn"), arguments.pop("sizes"), **arguments)
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


def test_counted_flops_counts_each_matrix_product_as_it_runs():
    a, b, c = torch.randn(3, 5), torch.randn(5, 7), torch.randn(7, 2)
    # (3 x 5) @ (5 x 7): 3 * 7 dot products of length 5; then (3 x 7) @ (7 x 2)
    assert counted_flops(lambda: a @ b @ c) == 2 * (3 * 7 * 5 + 3 * 2 * 7)
    assert counted_flops(lambda: (a @ b).softmax(-1)) == 2 * 3 * 7 * 5  # softmax not counted
    with pytest.raises(TypeError, match="fn must be callable, got Tensor"):
        counted_flops(a)


PAGE_FAULTS_IN_A_FRESH_PROCESS = """
import json, resource, torch
from attnlib.measure import page_faults
n_bytes = 64 << 20  # above glibc's largest mmap threshold (32 MiB): mapped afresh each call
fresh = page_faults(lambda: torch.ones(n_bytes // 4))
buffer = torch.empty(n_bytes // 4)
reused = page_faults(lambda: buffer.fill_(1.0), runs=2)
print(json.dumps({"pages": n_bytes // resource.getpagesize(), "page_bytes":
                  resource.getpagesize(), "fresh": fresh._asdict(), "reused": reused._asdict()}))
"""


def transparent_huge_pages_always():
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or transparent_huge_pages_always(),
                    reason="counts 4 KiB pages as Linux without always-on huge pages gives them")
def test_page_faults_count_the_pages_of_memory_fresh_from_the_os():
    """Run in a fresh, single-threaded interpreter: what earlier tests left in the
    allocator, and other threads' faults, cannot change the count."""
    result = subprocess.run([sys.executable, "-c", PAGE_FAULTS_IN_A_FRESH_PROCESS],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    counts = json.loads(result.stdout)
    pages, fresh, reused = counts["pages"], counts["fresh"], counts["reused"]
    assert fresh["page_bytes"] == counts["page_bytes"]
    assert pages <= fresh["faults"] <= pages * 1.05
    assert reused["faults"] < pages / 100
    for each in (fresh, reused):
        assert 0 <= each["kernel_seconds"] <= each["cpu_seconds"]


def test_page_faults_is_none_without_the_resource_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: import fails
    assert page_faults(lambda: None) is None


def test_page_faults_rejects_bad_arguments():
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        page_faults(3)
    with pytest.raises(ValueError, match="runs must be >= 1, got 0"):
        page_faults(lambda: None, runs=0)


def test_time_call_times_the_call_with_its_arguments():
    calls = []

    def nap(seconds, tag):
        calls.append(tag)
        time.sleep(seconds)

    timing = time_call(nap, 0.002, "x", min_run_time=0.01, max_run_time=0.05)
    assert isinstance(timing, Timing) and calls and set(calls) == {"x"}
    assert timing.median >= 0.002  # a sleep never ends early; no upper bound is asserted
    assert timing.iqr >= 0 and timing.spread == timing.iqr / timing.median


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"fn": "torch.mm"}, TypeError, "fn must be callable, got str"),
        ({"min_run_time": -1}, ValueError, "min_run_time must be a number of seconds > 0, got -1"),
        ({"max_run_time": True}, ValueError, "max_run_time must be a number of seconds > 0"),
        ({"threads": 0}, ValueError, "threads must be >= 1, got 0"),
    ],
)
def test_time_call_rejects_bad_input(kwargs, error, message):
    arguments = {"fn": torch.relu, **kwargs}
    with pytest.raises(error) as info:
        time_call(arguments.pop("fn"), torch.ones(3), **arguments)
    assert message in str(info.value)
