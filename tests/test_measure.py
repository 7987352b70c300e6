"""The measuring module: each function against what it claims to measure, on cases whose
answer is known (tensors of known size, power laws, operators that must appear)."""

import json
import math
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
    MAX_RESIDUAL,
    MAX_SPREAD,
    MIN_REPEATS,
    Measurement,
    Timing,
    attention_inputs,
    counted_flops,
    cpu_op_times,
    fit_exponent,
    fit_power_law,
    judge_growth,
    judge_ratio,
    judge_repeats,
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


OS_COUNTS_IN_A_FRESH_PROCESS = """
import json, resource, torch
from attnlib.measure import measure, page_faults
n_floats = (64 << 20) // 4  # above glibc's largest mmap threshold (32 MiB): mapped afresh each call
fresh = page_faults(lambda: torch.ones(n_floats))
buffer = torch.empty(n_floats)
reused = page_faults(lambda: buffer.fill_(1.0), runs=2)
kept = []

def first_call_only(x):  # allocates only in its first call, then reuses the buffer
    if not kept:
        kept.append(torch.empty(n_floats))
    return kept[0].fill_(1.0)

timed = {name: measure(fn, [n_floats], lambda n: torch.ones(1), memory=False,
                       min_run_time=0.05, max_run_time=0.2)[0]
         for name, fn in [("fresh", lambda x: torch.ones(n_floats)),
                          ("first_call_only", first_call_only)]}
print(json.dumps({"pages": n_floats * 4 // resource.getpagesize(), "bytes": n_floats * 4,
                  "page_bytes": resource.getpagesize(), "fresh": fresh._asdict(),
                  "reused": reused._asdict(),
                  "timed": {k: {"fresh_bytes": m.fresh_bytes, **m.os_cost._asdict()}
                            for k, m in timed.items()}}))
"""


def transparent_huge_pages_always():
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


linux_4k_pages = pytest.mark.skipif(
    not sys.platform.startswith("linux") or transparent_huge_pages_always(),
    reason="counts 4 KiB pages as Linux without always-on huge pages gives them")


@pytest.fixture(scope="module")
def os_counts():
    """Run in a fresh, single-threaded interpreter: what earlier tests left in the
    allocator, and other threads' faults, cannot change the count."""
    result = subprocess.run([sys.executable, "-c", OS_COUNTS_IN_A_FRESH_PROCESS],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result.stdout)


@linux_4k_pages
def test_page_faults_count_the_pages_of_memory_fresh_from_the_os(os_counts):
    pages, fresh, reused = os_counts["pages"], os_counts["fresh"], os_counts["reused"]
    assert fresh["page_bytes"] == os_counts["page_bytes"]
    assert pages <= fresh["faults"] <= pages * 1.05
    assert reused["faults"] < pages / 100
    for each in (fresh, reused):
        assert 0 <= each["kernel_seconds"] <= each["cpu_seconds"]


@linux_4k_pages
def test_measure_counts_the_fresh_memory_of_the_timed_calls_after_the_first(os_counts):
    fresh, first_only = os_counts["timed"]["fresh"], os_counts["timed"]["first_call_only"]
    assert fresh["page_bytes"] == os_counts["page_bytes"]
    assert os_counts["bytes"] <= fresh["fresh_bytes"] <= os_counts["bytes"] * 1.05
    assert first_only["fresh_bytes"] < os_counts["bytes"] / 100  # the first call is not counted
    for each in (fresh, first_only):
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


def test_time_call_times_a_slow_call_at_least_min_repeats_times():
    """A call slower than max_run_time would leave one block, whose spread is 0 whatever
    the noise: time_call times it MIN_REPEATS times (after benchmark's warm-up call)."""
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)

    timing = time_call(slow, min_run_time=0.001, max_run_time=0.001)
    assert len(calls) >= 1 + MIN_REPEATS
    assert timing.median >= 0.02 and timing.iqr >= 0


# --- what the timed calls cost the operating system -----------------------------------

def test_measurement_without_os_counts_has_no_fresh_bytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: import fails
    (run,) = measure.measure(torch.relu, [8], lambda n: torch.ones(n), min_run_time=0.01)
    assert run.os_cost is None and run.fresh_bytes is None
    assert Measurement(8, 1.0, None, 0.1).os_cost is None  # older four-field construction


# --- the noise judgement --------------------------------------------------------------

SIZES = [1024, 2048, 4096, 8192]
#: deterministic noise: how far each timing is off the law n^2, and how much its repeats
#: disagree, on a quiet and on a busy machine
QUIET = {"off": [1.01, 0.99, 1.02, 0.98], "spread": [0.03, 0.05, 0.04, 0.06]}
BUSY = {"off": [1.0, 1.9, 0.7, 1.3], "spread": [0.1, 0.8, 0.5, 0.3]}


def power_law_runs(noise, exponent=2.0):
    return [Measurement(n, 1e-9 * n**exponent * off, None, spread)
            for n, off, spread in zip(SIZES, noise["off"], noise["spread"], strict=True)]


def numpy_fit(sizes, values):
    slope, intercept = np.polyfit(np.log(sizes), np.log(values), 1)
    worst = np.max(np.abs(np.log(values) - (intercept + slope * np.log(sizes))))
    return slope, np.expm1(worst)


@pytest.mark.parametrize("noise", [QUIET, BUSY])
def test_fit_power_law_matches_numpys_least_squares_and_its_residual(noise):
    runs = power_law_runs(noise)
    sizes, values = [r.n for r in runs], [r.seconds for r in runs]
    slope, residual = numpy_fit(sizes, values)
    fit = fit_power_law(sizes, values)
    assert fit.exponent == pytest.approx(slope, rel=1e-10)
    assert fit.residual == pytest.approx(residual, rel=1e-10)
    assert fit_exponent(sizes, values) == fit.exponent
    assert fit_power_law([10, 20, 40], [3.0, 6.0, 12.0]).residual == pytest.approx(0, abs=1e-12)
    assert fit_power_law([10, 20], [5.0, 7.0]).residual == pytest.approx(0, abs=1e-12)


def test_the_judgement_flips_from_a_finding_to_too_noisy_to_tell():
    """The same power law, measured quietly and on a busy machine."""
    quiet = judge_growth(power_law_runs(QUIET), label="chapter 2")
    assert quiet.meaningful and quiet.value == pytest.approx(2.0, abs=0.05)
    slope, residual = numpy_fit(SIZES, [r.seconds for r in power_law_runs(QUIET)])
    assert quiet.value == pytest.approx(slope, rel=1e-10)
    assert str(quiet) == quiet.sentence == (
        f"chapter 2: time grows like N^{slope:.2f} (repeats agree within 6%, points within "
        f"{residual:.0%} of the power law)")

    busy = judge_growth(power_law_runs(BUSY), label="chapter 2")
    assert not busy.meaningful and busy.spread == 0.8
    slope, residual = numpy_fit(SIZES, [r.seconds for r in power_law_runs(BUSY)])
    assert busy.residual == pytest.approx(residual, rel=1e-10) and residual > MAX_RESIDUAL
    assert busy.sentence == (f"chapter 2: too noisy to tell: spread up to 80%, fit residual "
                             f"{residual:.0%}; rerun on a quieter machine")
    assert "N^" not in busy.sentence  # the noisy exponent is not printed as a finding


def test_a_large_residual_alone_is_no_power_law_and_a_large_spread_alone_is_too_noisy():
    quiet_but_off = power_law_runs({"off": BUSY["off"], "spread": QUIET["spread"]})
    assert fit_power_law(SIZES, [r.seconds for r in quiet_but_off]).residual > MAX_RESIDUAL
    off = judge_growth(quiet_but_off)
    assert not off.meaningful and off.sentence.startswith("no single power law: the points ")
    assert "so no exponent is given" in off.sentence and "too noisy" not in off.sentence
    on_the_line_but_spread = power_law_runs({"off": QUIET["off"], "spread": BUSY["spread"]})
    assert not judge_growth(on_the_line_but_spread).meaningful
    assert judge_growth(on_the_line_but_spread, max_spread=0.9).meaningful


@pytest.fixture
def fake_timer(monkeypatch):
    """measure's timings replaced by a machine whose load the test sets: time_call gets the
    input tensor torch.full((1,), n) and answers 1e-9 n^2 seconds times
    machine["load"](n, k) for the k-th repeat of n (k = 0 for the first one timed here),
    with repeats that disagree by machine["spread"]."""
    machine = {"load": lambda n, k: 1.0, "spread": 0.04, "timed": []}

    def fake_time_call(fn, x, **kwargs):
        n = int(x.item())
        k = machine["timed"].count(n)
        machine["timed"].append(n)
        seconds = 1e-9 * n**2 * machine["load"](n, k)
        return Timing(seconds, seconds * machine["spread"])

    monkeypatch.setattr(measure, "time_call", fake_time_call)
    return machine


def judge_on_fake_timer(runs, **kwargs):
    return judge_growth(runs, fn=torch.relu, make_inputs=lambda n: torch.full((1,), n),
                        **kwargs)


def test_judge_growth_measures_every_size_again_largest_first_and_keeps_the_faster(
        fake_timer):
    runs = power_law_runs(QUIET)
    runs = [r._replace(peak_bytes=r.n) for r in runs]
    verdict = judge_on_fake_timer(runs)
    assert fake_timer["timed"] == SIZES[::-1]
    kept = [min(first.seconds, 1e-9 * first.n**2) for first in runs]
    assert [m.seconds for m in verdict.measurements] == kept
    disagreement = max(abs(off - 1) / min(off, 1) for off in QUIET["off"])
    assert verdict.spread == pytest.approx(max(disagreement, *QUIET["spread"]))
    assert [m.peak_bytes for m in verdict.measurements] == SIZES  # the first peak is kept
    assert verdict.meaningful and verdict.value == pytest.approx(
        numpy_fit(SIZES, kept)[0], rel=1e-10)
    assert verdict.sentence.endswith("; each size measured twice)")


def test_load_that_lasts_through_each_size_fools_one_pass_but_not_two(fake_timer):
    """Each size's repeats agree and the points lie on a power law, but the machine got
    busier from size to size: the first pass says N^2.4.  Measured again largest first,
    under the same rising load, the sizes disagree with their first timing."""
    rising = [1.0, 1.25, 1.6, 2.0]  # the load while each size was timed, in that order
    first = [Measurement(n, 1e-9 * n**2 * load, None, 0.03)
             for n, load in zip(SIZES, rising, strict=True)]
    one_pass = judge_growth(first)
    assert one_pass.meaningful and one_pass.value > 2.3  # fooled
    fake_timer["load"] = lambda n, k: 2.5 + k  # ... and still busy afterwards
    two_passes = judge_on_fake_timer(first)
    assert not two_passes.meaningful
    assert two_passes.sentence.startswith("too noisy to tell: spread up to ")
    assert "each size measured twice, N = 1024, 2048, 4096, 8192 three times" in (
        two_passes.sentence)


def test_a_third_timing_sets_the_slowest_aside_not_the_odd_one_out(fake_timer):
    """Load only slows a call down: of 1.0, 3.0 and 3.1 the two slow ones were disturbed,
    even though they agree with each other."""
    runs = power_law_runs(QUIET)
    fake_timer["load"] = lambda n, k: QUIET["off"][SIZES.index(n)] * (3 + k / 10) if (
        n == 4096) else QUIET["off"][SIZES.index(n)]
    verdict = judge_on_fake_timer(runs)
    assert fake_timer["timed"] == [*SIZES[::-1], 4096]
    assert not verdict.meaningful and verdict.spread == pytest.approx(2.0)
    assert verdict.measurements[2].seconds == runs[2].seconds


def test_one_disturbed_timing_gets_a_third_chance(fake_timer):
    runs = power_law_runs(QUIET)
    runs[1] = runs[1]._replace(seconds=runs[1].seconds * 3)  # a burst of load at N = 2048
    verdict = judge_on_fake_timer(runs)
    assert fake_timer["timed"] == [*SIZES[::-1], 2048]
    assert verdict.meaningful
    assert verdict.measurements[1].seconds == pytest.approx(1e-9 * 2048**2)
    assert "N = 2048 three times" in verdict.sentence


def test_judge_growth_gives_up_when_the_machine_stays_noisy(fake_timer):
    fake_timer["spread"] = 0.5
    verdict = judge_on_fake_timer(power_law_runs(BUSY), label="chapter 2")
    assert not verdict.meaningful and verdict.spread >= 0.5
    assert verdict.sentence.startswith("chapter 2: too noisy to tell: spread up to ")
    assert verdict.sentence.endswith("; rerun on a quieter machine")


def test_two_sizes_have_no_residual_and_are_judged_on_their_spreads():
    two = power_law_runs(QUIET)[2:]
    verdict = judge_growth(two, "grows like N^{:.1f}")
    exponent = 2 + math.log2(QUIET["off"][3] / QUIET["off"][2])  # the line through both
    assert verdict.meaningful and verdict.residual == 0
    assert verdict.value == pytest.approx(exponent, rel=1e-12)
    assert verdict.sentence == f"grows like N^{exponent:.1f} (repeats agree within 6%)"
    assert not judge_growth(power_law_runs(BUSY)[2:]).meaningful


def test_judge_ratio_reports_a_ratio_only_when_both_timings_are_quiet():
    slow, fast = Measurement(8192, 2.0, None, 0.05), Measurement(8192, 0.25, None, 0.08)
    verdict = judge_ratio(slow, fast, "{:.1f} times as long", label="chapter 2 vs fused")
    assert verdict.meaningful and verdict.value == 8.0
    assert verdict.sentence == "chapter 2 vs fused: 8.0 times as long (repeats agree within 8%)"
    noisy = judge_ratio(slow, fast._replace(spread=MAX_SPREAD * 2))
    assert not noisy.meaningful and noisy.value == 8.0
    assert noisy.sentence == "too noisy to tell: spread up to 40%; rerun on a quieter machine"
    assert judge_ratio(Timing(3.0, 0.3), Timing(1.5, 0.03)).value == 2.0  # Timings too


def test_judge_repeats_takes_the_median_and_the_same_spread_as_time_call():
    values = [0.30, 0.36, 0.33, 0.31, 0.34]
    p25, median, p75 = np.percentile(values, [25, 50, 75])
    verdict = judge_repeats(values, "matrix products take {:.0%} of the time")
    assert verdict.value == pytest.approx(median) and verdict.meaningful
    assert verdict.spread == pytest.approx((p75 - p25) / median)
    assert verdict.sentence.startswith("matrix products take 33% of the time")
    assert not judge_repeats([0.1, 0.5, 0.3]).meaningful


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: judge_growth(power_law_runs(QUIET)[:1]), ValueError,
         "measurements must hold two or more different sizes to fit, got sizes [1024]"),
        (lambda: judge_growth(power_law_runs(QUIET)[:1] * 2), ValueError,
         "two or more different sizes to fit, got sizes [1024, 1024]"),
        (lambda: judge_growth([(1024, 0.1)]), TypeError,
         "measurements must be a list of Measurement"),
        (lambda: judge_growth(power_law_runs(QUIET), "grows like N^2"), ValueError,
         "finding must be a format string with one {} field for the value, got 'grows like N^2'"),
        (lambda: judge_growth(power_law_runs(QUIET), "{} and {}"), ValueError,
         "with one {} field"),
        (lambda: judge_growth(power_law_runs(QUIET), "N^{0.real.x}"), ValueError,
         "with one {} field"),
        (lambda: judge_growth(power_law_runs(QUIET), 2), TypeError, "finding must be a str"),
        (lambda: judge_growth(power_law_runs(QUIET), fn=3), TypeError,
         "fn must be callable or None, got int"),
        (lambda: judge_growth(power_law_runs(QUIET), label=1), TypeError,
         "label must be a str or None, got int"),
        (lambda: judge_growth(power_law_runs(QUIET), max_spread=0), ValueError,
         "max_spread must be a number > 0, got 0"),
        (lambda: judge_growth(power_law_runs(QUIET), max_residual=True), ValueError,
         "max_residual must be a number > 0, got True"),
        (lambda: judge_ratio(1.0, Timing(1.0, 0.1)), TypeError,
         "numerator must be a Measurement or a Timing, got float"),
        (lambda: judge_repeats([0.3]), ValueError, "values must be two or more numbers > 0"),
        (lambda: judge_repeats([0.3, 0.0]), ValueError, "values must be two or more numbers > 0"),
    ],
)
def test_the_judgements_reject_bad_input(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_the_limits_are_documented_fractions():
    assert 0 < MAX_SPREAD < 1 and 0 < MAX_RESIDUAL < 1
