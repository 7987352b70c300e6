"""The benchmark command: its tables say what the records say (no timing assertions)."""

import json
import subprocess
import sys

import pytest
import torch

from attnlib import benchmark
from tests.reference import attention64


def time_record(n, causal, implementation, median_s, iqr_s=0.0, gflops=1.0):
    return {"n": n, "causal": causal, "implementation": implementation, "median_s": median_s,
            "iqr_s": iqr_s, "gflops": gflops}


def test_time_table_states_ratios_against_the_tiled_forward():
    records = [time_record(4096, False, "naive", 1.5, iqr_s=0.3),
               time_record(4096, False, "tiled", 0.5),
               time_record(4096, False, "pytorch", 0.25)]
    table = benchmark.format_times(records, matmul=100.0)
    row = table.splitlines()[-1]
    assert row.split()[:2] == ["4096", "no"]
    assert "1500.0 ±10%" in row and "3.00x faster" in row and "2.00x slower" in row


def test_time_table_calls_a_ratio_too_noisy_when_repeats_disagree():
    records = [time_record(4096, True, "naive", 1.5, iqr_s=0.9),  # spread 60%
               time_record(4096, True, "tiled", 0.5, iqr_s=0.01),
               time_record(4096, True, "pytorch", 0.25, iqr_s=0.01)]
    table = benchmark.format_times(records, matmul=100.0).splitlines()
    assert "too noisy" in table[-2] and "2.00x slower" in table[-2]
    assert table[-1].startswith("Repeats disagree by up to 60% of their median")


def test_memory_table_gives_naive_over_tiled_and_growth():
    mib = benchmark.MIB
    records = [{"n": n, "implementation": name, "peak_bytes": b * mib} for n, name, b in [
        (1024, "naive", 96), (1024, "tiled", 8), (2048, "naive", 384), (2048, "tiled", 12)]]
    rows = benchmark.format_memory(records).splitlines()
    assert rows[2].split()[:4] == ["1024", "96.0", "8.0", "12.0x"]
    assert rows[3].split()[3] == "32.0x" and rows[3].endswith("x1.50 for N x2.00")


def test_inputs_follow_the_setting():
    setting = benchmark.Setting(dtype="float64", batch=2, heads=3, d=5)
    q, k, v = setting.inputs(7)
    assert q.shape == k.shape == v.shape == (2, 3, 7, 5) and q.dtype == torch.float64
    assert not torch.equal(q, k)
    assert torch.equal(setting.inputs(7)[0], q)  # seeded


def test_the_command_runs_end_to_end_and_writes_a_record(tmp_path, capsys):
    path = tmp_path / "record.json"
    benchmark.main(["--n", "64", "--memory-n", "32", "64", "--heads", "2", "--d", "8",
                    "--min-run-time", "0.01", "--block-q", "16", "--block-k", "16",
                    "--quiet", "--json", str(path)])
    out = capsys.readouterr().out
    assert "device: CPU" in out and "tiled blocks 16 x 16" in out
    record = json.loads(path.read_text())
    assert record["setting"]["heads"] == 2 and record["block_q"] == 16
    assert {(r["n"], r["causal"], r["implementation"]) for r in record["times"]} == {
        (64, c, name) for c in (False, True) for name in ("naive", "tiled", "pytorch")}
    peaks = {(r["n"], r["implementation"]): r["peak_bytes"] for r in record["memory"]}
    # naive attention holds (at least) the 64 x 64 scores of both heads in float32
    assert peaks[(64, "naive")] >= 2 * 64 * 64 * 4
    assert peaks[(64, "naive")] > peaks[(32, "naive")]


def test_unknown_implementation_is_refused():
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--implementations", "magic"])


def test_block_sweep_lists_each_block_size_with_and_without_mask(capsys):
    record = benchmark.main(["--sweep-blocks", "--n", "16", "32", "--heads", "1", "--d", "4",
                             "--min-run-time", "0.001", "--quiet"])
    sizes = {(r["block_q"], r["block_k"]) for r in record["sweep"]}
    assert (256, 256) in sizes and {r["n"] for r in record["sweep"]} == {32}
    rows = capsys.readouterr().out.split("Tiled forward time by block size")[1].splitlines()
    assert rows[1].split() == ["block_q", "block_k", "full", "causal"]
    assert len(rows) == 2 + len(sizes) and all(len(row.split()) == 4 for row in rows[2:])


def test_scaling_reports_each_size_the_memory_ratio_and_the_exponent(capsys):
    benchmark.main(["--scaling", "64", "128"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("naive attention (chapter 2), one head, d = 64, float32; CPU")
    rows = [line for line in lines if line.startswith("N = ")]
    assert [row.split(":")[0] for row in rows] == ["N =     64", "N =    128"]
    # chapter 2's attention holds three N x N float32 matrices: the ratio is about 1
    ratios = [float(row.split(" = ")[-1].split(" x")[0]) for row in rows]
    assert all(0.8 < ratio < 1.6 for ratio in ratios), ratios
    verdict = lines[-1]
    assert ("time grows like N^" in verdict and "over N = 64, 128" in verdict) or \
        "too noisy to tell" in verdict, verdict


# --- the comparison of chapter 7 -------------------------------------------------------


def test_each_forced_sdpa_backend_is_attention_or_says_why_not():
    q, k, v = benchmark.measure.attention_inputs(9, 8, heads=2, dtype=torch.float64)
    for name in benchmark.SDPA_BACKENDS:
        attend = benchmark.sdpa_backend(name)
        reason = benchmark.why_unavailable(attend, q, k, v, True)
        if reason is None:
            torch.testing.assert_close(attend(q, k, v, is_causal=True),
                                       attention64(q, k, v, is_causal=True))
        else:
            assert name in ("sdpa-efficient", "sdpa-cudnn", "sdpa-flash") and reason
    assert benchmark.why_unavailable(benchmark.sdpa_backend("sdpa-math"), q, k, v, False) is None


def test_forward_and_backward_count_three_and_a_half_forwards():
    setting = benchmark.Setting(batch=2, heads=3)
    forward = benchmark.Case("naive", "float16", 64, True, False)
    both = forward._replace(backward=True)
    assert benchmark.case_flops(forward, 512, setting) == benchmark.cost.attention_flops(
        512, 64, 3, 2, causal=True)
    assert benchmark.case_flops(both, 512, setting) == 3.5 * benchmark.case_flops(
        forward, 512, setting)


def test_a_case_that_runs_out_of_memory_is_recorded_and_stops_its_larger_sizes():
    calls = []

    def grows(q, k, v, is_causal=False):
        calls.append(q.shape[-2])
        if q.shape[-2] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return q

    setting = benchmark.Setting(heads=1, d=4)
    case = benchmark.Case("grows", "float32", 4, False, False)
    records = benchmark.gpu_sweep(setting, (8, 16, 32, 64), [case], {"grows": grows},
                                  {"float32": 1.0}, min_run_time=0.001)
    assert [(r["n"], r["status"]) for r in records] == [(8, "ok"), (16, "ok"),
                                                       (32, "does not fit")]
    assert 64 not in calls
    assert all(r["peak_bytes"] >= 0 and r["percent_of_peak"] > 0 for r in records[:2])


def test_the_time_budget_skips_what_is_left_and_says_so():
    case = benchmark.Case("naive", "float32", 4, False, False)
    records = benchmark.gpu_sweep(benchmark.Setting(heads=1), (8, 16), [case],
                                  {"naive": benchmark.attention.scaled_dot_product_attention},
                                  {"float32": None}, budget_s=-1)
    assert [r["status"] for r in records] == ["skipped", "skipped"]
    assert "time budget" in records[0]["reason"]


def test_the_cases_keep_chapter_2_and_6_versions_to_the_first_dtype():
    cases = benchmark.comparison_cases(["naive", "sdpa-flash"], ("float16", "bfloat16"),
                                       (64,), causal=(True,), backward=(False,))
    assert [(c.implementation, c.dtype) for c in cases] == [
        ("naive", "float16"), ("sdpa-flash", "float16"), ("sdpa-flash", "bfloat16")]


def test_known_gpus_take_published_peaks_unknown_ones_a_measured_one(monkeypatch):
    monkeypatch.setattr(benchmark, "device_facts", lambda device: {"name": "NVIDIA H200"})
    peak = benchmark.peak_figures(benchmark.Setting(), ("float16", "bfloat16"))
    assert peak["tflops"] == {"float16": 989.5, "bfloat16": 989.5}
    assert "nvidia.com" in peak["source"]
    monkeypatch.setattr(benchmark, "device_facts", lambda device: {"name": "Some GPU"})
    monkeypatch.setattr(benchmark, "matmul_gflops", lambda setting, min_run_time: 2000.0)
    peak = benchmark.peak_figures(benchmark.Setting(), ("float32",))
    assert peak["tflops"] == {"float32": 2.0} and peak["source"].startswith("measured here")


def test_the_comparison_table_shows_figures_and_reasons():
    base = {"dtype": "float16", "d": 64, "causal": True, "backward": False}
    record = {"device": {"name": "NVIDIA H200"}, "versions": {"torch": "2.11.0"},
              "date": "2026-12-01T00:00:00+00:00", "peak": {"source": "vendor page"},
              "setting": {"ns": [512, 1024]},
              "results": [{**base, "implementation": "sdpa-flash", "n": 512, "status": "ok",
                           "tflops": 312.4, "percent_of_peak": 31.6, "median_s": 1.0,
                           "iqr_s": 0.01},
                          {**base, "implementation": "naive", "n": 512, "status": "ok",
                           "tflops": 20.0, "percent_of_peak": None, "median_s": 1.0,
                           "iqr_s": 0.5},
                          {**base, "implementation": "naive", "n": 1024,
                           "status": "does not fit"},
                          {**base, "implementation": "sdpa-cudnn", "n": 512,
                           "status": "unavailable", "reason": "cuDNN needs sm80"}]}
    table = benchmark.format_comparison(record)
    assert "float16, d = 64, causal, forward: TFLOP/s (% of peak)" in table
    assert "312 (32%)" in table and "no fit" in table
    assert "~      20" in table and "~: its repeats disagree by more than 20%" in table
    assert "sdpa-cudnn (float16, d = 64): cuDNN needs sm80" in table


def test_the_record_command_imports_nothing_notebook_only():
    """The GPU machine that runs `make gpu-record` has PyTorch and Triton but neither
    ipywidgets nor IPython."""
    code = ("import sys; sys.modules.update(ipywidgets=None, IPython=None); "
            "import attnlib.benchmark, attnlib.hardware; "
            "print(sorted(attnlib.benchmark.comparison_implementations()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sdpa-flash" in done.stdout and "naive" in done.stdout
