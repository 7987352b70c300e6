"""Measured records: every committed one, and a fresh run of the harness, follow the
schema; a record that breaks it is refused."""

import json
from pathlib import Path

import jsonschema
import pytest

from attnlib import benchmark

RECORDS = Path(__file__).resolve().parent.parent / "records"
SCHEMA = json.loads((RECORDS / "schema.json").read_text())


def committed_records():
    return sorted(p for p in RECORDS.glob("*.json") if p.name != "schema.json")


@pytest.mark.parametrize("path", committed_records(), ids=lambda p: p.name)
def test_committed_record_follows_the_schema_and_its_own_settings(path):
    record = json.loads(path.read_text())
    jsonschema.validate(record, SCHEMA)
    assert path == benchmark.record_path(record, RECORDS)
    assert {r["n"] for r in record["results"]} <= set(record["setting"]["ns"])
    for r in record["results"]:
        if r["status"] == "ok":  # TFLOP/s is the FLOP count over the time, nothing else
            case = benchmark.Case(r["implementation"], r["dtype"], r["d"], r["causal"],
                                  r["backward"])
            setting = benchmark.Setting(batch=record["setting"]["batch"],
                                        heads=record["setting"]["heads"])
            flops = benchmark.case_flops(case, r["n"], setting)
            assert r["tflops"] == pytest.approx(flops / r["median_s"] / 1e12, rel=1e-9)


@pytest.fixture(scope="module")
def cpu_record(tmp_path_factory):
    """The harness's own CPU sweep, made tiny: two sizes, naive and PyTorch's backends."""
    plan = {"ns": (16, 32), "batch": 1, "heads": 2, "ds": (8,), "dtypes": ("float32",),
            "budget_s": 60}
    implementations = {"naive": benchmark.attention.scaled_dot_product_attention,
                       **{name: benchmark.sdpa_backend(name) for name in benchmark.SDPA_BACKENDS}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(benchmark.SWEEPS, "cpu", plan)
        return benchmark.record_sweep("cpu", "cpu", min_run_time=0.001,
                                      implementations=implementations)


def test_a_fresh_cpu_record_follows_the_schema(cpu_record):
    jsonschema.validate(cpu_record, SCHEMA)
    statuses = {(r["implementation"], r["status"]) for r in cpu_record["results"]}
    assert ("naive", "ok") in statuses and ("sdpa-math", "ok") in statuses
    # no CUDA here: the efficient and cuDNN backends say why they cannot run
    unavailable = {r["implementation"]: r["reason"] for r in cpu_record["results"]
                   if r["status"] == "unavailable"}
    assert {"sdpa-efficient", "sdpa-cudnn"} <= set(unavailable)
    assert all(len(reason) > 10 for reason in unavailable.values())


@pytest.mark.parametrize(
    ("change", "where"),
    [(lambda r: r.pop("versions"), "versions"),
     (lambda r: r["results"][0].update(status="fast"), "status"),
     (lambda r: r["results"][0].pop("tflops"), "tflops"),
     (lambda r: r["device"].update(type="tpu"), "tpu")],
)
def test_the_schema_refuses_a_broken_record(cpu_record, change, where):
    broken = json.loads(json.dumps(cpu_record))
    ok = next(i for i, r in enumerate(broken["results"]) if r["status"] == "ok")
    broken["results"].insert(0, broken["results"].pop(ok))
    change(broken)
    with pytest.raises(jsonschema.ValidationError, match=where):
        jsonschema.validate(broken, SCHEMA)
