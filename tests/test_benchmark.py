"""The benchmark command: its tables say what the records say (no timing assertions)."""

import json

import pytest
import torch

from attnlib import benchmark


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
    assert lines[-1].startswith("time grows like N^") and lines[-1].endswith("over N = 64, 128")
