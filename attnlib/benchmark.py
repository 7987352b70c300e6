"""Benchmark attention implementations: forward time, GFLOP/s and peak memory.

    python -m attnlib.benchmark                      # CPU, float32, batch 1, 8 heads, d = 64
    python -m attnlib.benchmark --n 512 1024 --memory-n 512 1024 --min-run-time 0.2
    python -m attnlib.benchmark --sweep-blocks       # time the tiled forward per block size
    python -m attnlib.benchmark --json results.json  # also write the figures as a record
    python -m attnlib.benchmark --scaling            # chapter 5: naive attention against N

Every figure comes from one run on one machine, so ratios between implementations are
meaningful even on a busy machine where absolute times are not.  Times are medians of
`torch.utils.benchmark` (with the interquartile range as a measure of noise); GFLOP/s
use `attnlib.cost.attention_flops` (4 B h N^2 d, half with a causal mask) and are shown
next to the device's measured matrix-multiply throughput; memory is the peak that torch
allocates during one forward (`attnlib.measure.peak_memory`), inputs excluded.

Memory: naive attention holds N x N matrices, about 6 GiB for 8 heads at N = 8192 in
float32 (the default largest --memory-n); with less free memory, pass smaller sizes, for
example --memory-n 1024 2048 4096.  A size that does not fit on a GPU is reported as OOM;
on a CPU it may make the machine swap instead.
"""

import argparse
import datetime
import functools
import json
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from attnlib import attention, cost, flash, measure
from attnlib.device import describe_device

#: The implementations compared, by name: f(q, k, v, is_causal=...) -> output.
IMPLEMENTATIONS = {
    "naive": attention.scaled_dot_product_attention,
    "tiled": flash.flash_attention,
    "pytorch": F.scaled_dot_product_attention,
}

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}

MIB = 2**20


@dataclass(frozen=True)
class Setting:
    """What every measurement of one run shares."""

    device: str = "cpu"
    dtype: str = "float32"
    batch: int = 1
    heads: int = 8
    d: int = 64
    threads: int = 0  # 0: torch's current number of threads

    def inputs(self, n, seed=0):
        """q, k, v of shape (batch, heads, n, d), standard normal (`measure.attention_inputs`)."""
        return measure.attention_inputs(n, self.d, self.heads, self.batch, DTYPES[self.dtype],
                                        self.device, seed)

    def num_threads(self):
        return self.threads or torch.get_num_threads()

    def time(self, fn, *args, min_run_time=1.0):
        """`measure.time_call` with this setting's threads."""
        return measure.time_call(fn, *args, min_run_time=min_run_time,
                                 max_run_time=3 * min_run_time,
                                 threads=self.num_threads())


def matmul_gflops(setting, size=2048, min_run_time=1.0):
    """Measured throughput of one size x size x size matrix product, in GFLOP/s."""
    a, b = (torch.randn(size, size).to(setting.device, DTYPES[setting.dtype]) for _ in range(2))
    return 2 * size**3 / setting.time(torch.mm, a, b, min_run_time=min_run_time).median / 1e9


def time_forward(ns, setting, implementations, causal=(False, True), min_run_time=1.0,
                 progress=None):
    """Forward time of each implementation at each N: a list of records (dicts)."""
    records = []
    for n in ns:
        q, k, v = setting.inputs(n)
        for is_causal in causal:
            flops = cost.attention_flops(n, setting.d, setting.heads, setting.batch, is_causal)
            for name, fn in implementations.items():
                m = setting.time(functools.partial(fn, is_causal=is_causal), q, k, v,
                                 min_run_time=min_run_time)
                records.append({"n": n, "causal": is_causal, "implementation": name,
                                "median_s": m.median, "iqr_s": m.iqr,
                                "gflops": flops / m.median / 1e9})
                if progress:
                    progress(f"timed {name} N={n} causal={is_causal}: {m.median * 1e3:.1f} ms")
    return records


def measure_memory(ns, setting, implementations, progress=None):
    """Peak bytes allocated during one forward, per implementation and N: records."""
    records = []
    for n in ns:
        q, k, v = setting.inputs(n)
        for name, fn in implementations.items():
            try:
                peak = measure.peak_memory(functools.partial(fn, q, k, v), setting.device)
            except torch.OutOfMemoryError:
                peak = None
            records.append({"n": n, "implementation": name, "peak_bytes": peak})
            if progress:
                shown = "out of memory" if peak is None else f"{peak / MIB:.1f} MiB"
                progress(f"memory {name} N={n}: {shown}")
    return records


def sweep_blocks(n, setting, sizes, causal=(False, True), min_run_time=1.0, progress=None):
    """Tiled forward time at N for each (block_q, block_k) in `sizes`: records."""
    q, k, v = setting.inputs(n)
    records = []
    for block_q, block_k in sizes:
        for is_causal in causal:
            fn = functools.partial(flash.flash_attention, is_causal=is_causal, block_q=block_q,
                                   block_k=block_k)
            m = setting.time(fn, q, k, v, min_run_time=min_run_time)
            records.append({"n": n, "block_q": block_q, "block_k": block_k,
                            "causal": is_causal, "median_s": m.median, "iqr_s": m.iqr})
            if progress:
                progress(f"tiled {block_q} x {block_k} causal={is_causal}: "
                         f"{m.median * 1e3:.1f} ms")
    return records


# --- the GPU comparison (chapter 7) --------------------------------------------------------

#: PyTorch's backends behind F.scaled_dot_product_attention, forced one at a time.
SDPA_BACKENDS = {"sdpa-math": "MATH", "sdpa-efficient": "EFFICIENT_ATTENTION",
                 "sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION"}

#: FLOPs of the backward pass against the forward's: five N x N x d matrix products (the
#: scores recomputed, dV, dP, dQ, dK) against two, the convention of FlashAttention's own
#: benchmarks (Dao, 2023, https://github.com/Dao-AILab/flash-attention, benchmarks/).
BACKWARD_FLOP_FACTOR = 2.5


def sdpa_backend(name):
    """f(q, k, v, is_causal) that runs F.scaled_dot_product_attention with only the backend
    `name` of `SDPA_BACKENDS` allowed (torch.nn.attention.sdpa_kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, SDPA_BACKENDS[name])

    def attend(q, k, v, is_causal=False):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    attend.__name__ = name
    return attend


def comparison_implementations(include_triton=True):
    """What chapter 7 compares: naive (chapter 2), tiled (chapter 6), the course's Triton
    kernel (when Triton is installed) and each of PyTorch's SDPA backends."""
    implementations = {"naive": attention.scaled_dot_product_attention,
                       "tiled": flash.flash_attention}
    if include_triton:
        try:
            from attnlib.triton_attention import triton_attention
        except ImportError:  # no Triton: the record says so through its absence
            pass
        else:
            implementations["triton"] = triton_attention
    implementations.update({name: sdpa_backend(name) for name in SDPA_BACKENDS})
    return implementations


def why_unavailable(fn, q, k, v, is_causal):
    """None if fn(q, k, v, is_causal=...) runs, else why not, in PyTorch's (or the
    implementation's) own words: the warnings it gave and its error."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn(q, k, v, is_causal=is_causal)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, TypeError, ImportError, NotImplementedError) as error:
            reasons = [str(w.message).strip() for w in caught] + [f"{error}".strip()]
            return " ".join(dict.fromkeys(r.splitlines()[0] for r in reasons if r))
    return None


class Case(NamedTuple):
    """One setting of the GPU comparison."""

    implementation: str
    dtype: str
    d: int
    causal: bool
    backward: bool  #: forward and backward together, or the forward alone


def case_flops(case, n, setting):
    """Attention FLOPs of one call: `cost.attention_flops`, times 1 + BACKWARD_FLOP_FACTOR
    for forward and backward."""
    forward = cost.attention_flops(n, case.d, setting.heads, setting.batch, case.causal)
    return forward * (1 + BACKWARD_FLOP_FACTOR) if case.backward else forward


def run_case(fn, case, n, setting, peak_tflops, min_run_time=0.1):
    """Time and peak memory of one case at one N: a record (dict) whose "status" is "ok",
    "does not fit" (out of memory) or "unavailable" (with PyTorch's reason)."""
    record = {"n": n, **case._asdict()}
    dtype = DTYPES[case.dtype]
    try:
        q, k, v = measure.attention_inputs(n, case.d, setting.heads, setting.batch, dtype,
                                           setting.device)
        reason = why_unavailable(fn, q, k, v, case.causal)
        if reason is not None:
            return {**record, "status": "unavailable", "reason": reason}
        call = functools.partial(fn, is_causal=case.causal)
        if case.backward:
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            grad_out = torch.randn_like(q[..., : v.shape[-1]])

            def step(q=q, k=k, v=v):
                return torch.autograd.grad(call(q, k, v), (q, k, v), grad_out)
        else:
            step = functools.partial(call, q, k, v)
        timing = setting.time(step, min_run_time=min_run_time)
        peak = measure.peak_memory(step, setting.device)
    except torch.OutOfMemoryError:
        return {**record, "status": "does not fit"}
    finally:
        if torch.device(setting.device).type == "cuda":
            torch.cuda.empty_cache()
    tflops = case_flops(case, n, setting) / timing.median / 1e12
    return {**record, "status": "ok", "median_s": timing.median, "iqr_s": timing.iqr,
            "tflops": tflops, "percent_of_peak": 100 * tflops / peak_tflops[case.dtype]
            if peak_tflops.get(case.dtype) else None, "peak_bytes": peak}


def gpu_sweep(setting, ns, cases, implementations, peak_tflops, min_run_time=0.1,
              budget_s=None, progress=None):
    """Every case at every N, smallest first.  After a case stops fitting (or is
    unavailable) its larger N are not tried; after `budget_s` seconds the remaining runs
    are recorded as skipped.  Returns the list of records."""
    import time

    start, records = time.perf_counter(), []
    for case in cases:
        for n in ns:
            if budget_s is not None and time.perf_counter() - start > budget_s:
                records.append({"n": n, **case._asdict(), "status": "skipped",
                                "reason": f"the sweep's time budget of {budget_s:g} s ran out"})
                continue
            record = run_case(implementations[case.implementation], case, n, setting,
                              peak_tflops, min_run_time)
            records.append(record)
            if progress:
                shown = (f"{record['tflops']:.1f} TFLOP/s" if record["status"] == "ok"
                         else record["status"])
                progress(f"{case.implementation} {case.dtype} d={case.d} "
                         f"causal={case.causal} backward={case.backward} N={n}: {shown}")
            if record["status"] != "ok":
                break
    return records


def device_facts(device):
    """Name, compute capability, memory and driver of a CUDA device; the CPU's line
    otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"name": f"{device.type.upper()} {platform.machine()}", "type": device.type,
                "description": describe_device(device)}
    import subprocess

    props = torch.cuda.get_device_properties(device)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                check=True).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        driver = None
    return {"name": props.name, "type": "cuda", "capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory, "driver": driver}


def versions():
    """Python, PyTorch, CUDA, Triton and attnlib versions, for a record."""
    import attnlib

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton_version,
            "attnlib": attnlib.__version__}


def peak_figures(setting, dtypes):
    """The device's dense peak TFLOP/s per dtype and where it comes from: the published
    figure (`hardware.gpu_spec`) for a known GPU, else a measured matrix product."""
    from attnlib import hardware

    spec = hardware.gpu_spec(device_facts(setting.device)["name"])
    if spec is not None:
        return {"tflops": {name: spec.peak_tflops(name) for name in dtypes},
                "bandwidth_gbs": spec.bandwidth_gbs, "source": spec.source}
    measured = {name: matmul_gflops(Setting(setting.device, name), min_run_time=0.3) / 1e3
                for name in dtypes}
    return {"tflops": measured, "bandwidth_gbs": None,
            "source": "measured here: 2048 x 2048 x 2048 matrix product (not a published "
                      "figure)"}


def comparison_cases(implementations, dtypes=("float16", "bfloat16"), ds=(64, 128),
                     causal=(False, True), backward=(False, True)):
    """The cases of the GPU sweep: chapters 2 and 6's PyTorch versions in the first dtype
    only, the fused kernels in every dtype."""
    return [Case(name, dtype, d, c, b) for name in implementations for dtype in dtypes
            for d in ds for c in causal for b in backward
            if dtype == dtypes[0] or name not in ("naive", "tiled")]


#: The two sweeps of `make gpu-record`: "full" fits in about 8 minutes on an H100/H200,
#: "quick" in about 3 on a T4 (16 GB); "cpu" is the same harness, small, on a CPU.
SWEEPS = {
    "full": {"ns": (512, 1024, 2048, 4096, 8192, 16384), "batch": 2, "heads": 16,
             "ds": (64, 128), "dtypes": ("float16", "bfloat16"), "budget_s": 420},
    "quick": {"ns": (512, 1024, 2048, 4096, 8192), "batch": 1, "heads": 16, "ds": (64,),
              "dtypes": ("float16",), "budget_s": 150},
    "cpu": {"ns": (128, 256, 512), "batch": 1, "heads": 2, "ds": (64,), "dtypes": ("float32",),
            "budget_s": 120},
}


def record_sweep(sweep="full", device="cuda", min_run_time=0.1, progress=None,
                 implementations=None):
    """Run one of `SWEEPS` on `device` and return the record: device, versions, date,
    settings, the peak figures and every result."""
    plan = SWEEPS[sweep]
    setting = Setting(device, plan["dtypes"][0], plan["batch"], plan["heads"], plan["ds"][0])
    implementations = implementations or comparison_implementations()
    cases = comparison_cases(implementations, plan["dtypes"], plan["ds"])
    if sweep == "cpu":
        cases = [case for case in cases if case.implementation != "triton"]
    peak = peak_figures(setting, plan["dtypes"])
    results = gpu_sweep(setting, plan["ns"], cases, implementations, peak["tflops"],
                        min_run_time, plan["budget_s"], progress)
    return {"schema": RECORD_SCHEMA_VERSION, "kind": "attention-comparison",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sweep": sweep, "device": device_facts(device), "versions": versions(),
            "setting": {"batch": plan["batch"], "heads": plan["heads"], "ns": list(plan["ns"]),
                        "ds": list(plan["ds"]), "dtypes": list(plan["dtypes"]),
                        "min_run_time": min_run_time, "budget_s": plan["budget_s"],
                        "backward_flop_factor": BACKWARD_FLOP_FACTOR},
            "peak": peak, "results": results}


#: Version of the record format; `records/schema.json` describes it.
RECORD_SCHEMA_VERSION = 1


def record_path(record, folder):
    """records/<date>_<device>_<sweep>.json, a name that sorts by date."""
    import re

    device = re.sub(r"[^A-Za-z0-9]+", "-", record["device"]["name"]).strip("-").lower()
    return Path(folder) / f"{record['date'][:10]}_{device}_{record['sweep']}.json"


# --- reports -----------------------------------------------------------------------------


def _find(records, **where):
    return next((r for r in records if all(r[k] == v for k, v in where.items())), None)


def format_times(records, matmul):
    """Table of forward times: ms (noise), GFLOP/s (share of matmul), and ratios."""
    names = list(dict.fromkeys(r["implementation"] for r in records))
    lines = ["Forward time: median ms (± half the interquartile range, %), "
             f"GFLOP/s (% of matmul's {matmul:.0f})",
             f"{'N':>6} {'causal':>6}" + "".join(f" {name:>23}" for name in names)
             + "   tiled vs naive   tiled vs pytorch"]
    for n, causal in dict.fromkeys((r["n"], r["causal"]) for r in records):
        cells = []
        for name in names:
            r = _find(records, n=n, causal=causal, implementation=name)
            noise = 50 * r["iqr_s"] / r["median_s"]
            cells.append(f" {r['median_s'] * 1e3:8.1f} ±{noise:2.0f}% "
                         f"{r['gflops']:5.1f} ({100 * r['gflops'] / matmul:3.0f}%)")
        line = f"{n:>6} {'yes' if causal else 'no':>6}" + "".join(cells)
        line += "   " + _ratio(records, n, causal, "naive") + "   " + _ratio(
            records, n, causal, "pytorch")
        lines.append(line)
    worst = max(r["iqr_s"] / r["median_s"] for r in records)
    if worst > measure.MAX_SPREAD:
        lines.append(f"Repeats disagree by up to {100 * worst:.0f}% of their median (more than "
                     f"{100 * measure.MAX_SPREAD:.0f}%): the machine was too busy for these "
                     "ratios to mean anything ('too noisy'); rerun on a quieter machine.")
    return "\n".join(lines)


def _ratio(records, n, causal, other):
    """'3.1x faster' or '1.4x slower': the tiled forward against another one."""
    tiled = _find(records, n=n, causal=causal, implementation="tiled")
    that = _find(records, n=n, causal=causal, implementation=other)
    if tiled is None or that is None:
        return f"{'-':>14}"
    spread = max(r["iqr_s"] / r["median_s"] for r in (tiled, that))
    ratio = that["median_s"] / tiled["median_s"]
    if spread > measure.MAX_SPREAD:
        return f"{'too noisy':>14}"
    text = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    return f"{text:>14}"


def format_memory(records):
    """Table of peak memory in MiB, naive / tiled, and the tiled version's growth."""
    names = list(dict.fromkeys(r["implementation"] for r in records))
    lines = ["Peak extra memory during one forward (MiB, torch's allocations, inputs excluded)",
             f"{'N':>6}" + "".join(f" {name:>10}" for name in names)
             + "   naive / tiled   tiled growth since previous N"]
    previous = None
    for n in dict.fromkeys(r["n"] for r in records):
        row = {name: _find(records, n=n, implementation=name)["peak_bytes"] for name in names}
        cells = "".join(f" {'OOM':>10}" if b is None else f" {b / MIB:10.1f}"
                        for b in row.values())
        naive, tiled = row.get("naive"), row.get("tiled")
        ratio = f"{naive / tiled:13.1f}x" if naive and tiled else f"{'-':>14}"
        growth = "-"
        if previous is not None and tiled:
            growth = f"x{tiled / previous[1]:.2f} for N x{n / previous[0]:.2f}"
        lines.append(f"{n:>6}{cells}  {ratio}   {growth}")
        previous = (n, tiled) if tiled else None
    return "\n".join(lines)


def format_sweep(records):
    lines = ["Tiled forward time by block size (ms, median)",
             f"{'block_q':>8} {'block_k':>8} {'full':>9} {'causal':>9}"]
    for bq, bk in dict.fromkeys((r["block_q"], r["block_k"]) for r in records):
        times = [_find(records, block_q=bq, block_k=bk, causal=c) for c in (False, True)]
        cells = "".join(f" {'-':>9}" if t is None else f" {t['median_s'] * 1e3:9.1f}"
                        for t in times)
        lines.append(f"{bq:>8} {bk:>8}{cells}")
    return "\n".join(lines)


def scaling(sizes=(4096, 6144, 8192)):
    """Chapter 5's measurement, on this machine's CPU: time and peak memory of naive
    attention (chapter 2's, one head, d = 64, float32) at each N, the memory against
    3 * score_matrix_bytes, and the fitted time exponent: report lines."""
    runs = measure.measure(attention.scaled_dot_product_attention, sizes, progress=False)
    lines = [f"naive attention (chapter 2), one head, d = 64, float32; {describe_device('cpu')}"]
    for run in runs:
        formula = 3 * cost.score_matrix_bytes(run.n, dtype=torch.float32)
        lines.append(f"N = {run.n:>6}: {run.seconds * 1e3:9.2f} ms ±{50 * run.spread:2.0f}%, "
                     f"peak {run.peak_bytes / 1e6:8.1f} MB = {run.peak_bytes / formula:.4f} x "
                     f"(3 * score_matrix_bytes)")
    verdict = measure.judge_growth(runs, f"time grows like N^{{:.2f}} over N = "
                                   f"{', '.join(map(str, sizes))}",
                                   fn=attention.scaled_dot_product_attention)
    lines.append(str(verdict))
    return lines


def header(setting, block_q, block_k, matmul):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"attnlib benchmark, {now}",
        f"device: {describe_device(setting.device)}; Python {platform.python_version()}",
        f"setting: {setting.dtype}, batch {setting.batch}, {setting.heads} heads, "
        f"d = {setting.d}, {setting.num_threads()} threads; tiled blocks "
        f"{block_q} x {block_k}",
        f"{setting.dtype} matmul throughput (2048 x 2048 x 2048): {matmul:.1f} GFLOP/s",
    ])


def format_comparison(record):
    """The record as tables, one per (dtype, d, causal, pass): TFLOP/s (percent of the
    device's peak) of each implementation at each N, or why there is no figure."""
    results = record["results"]
    names = list(dict.fromkeys(r["implementation"] for r in results))
    lines = [f"{record['device']['name']}; " + ", ".join(
        f"{k} {v}" for k, v in record["versions"].items() if v) + f"; {record['date']}",
             f"peak figures: {record['peak']['source']}"]
    settings = dict.fromkeys((r["dtype"], r["d"], r["causal"], r["backward"]) for r in results)
    short = {"does not fit": "no fit", "unavailable": "n/a", "skipped": "skipped"}
    for dtype, d, causal, backward in settings:
        lines += ["", f"{dtype}, d = {d}, {'causal' if causal else 'full'}, "
                  f"{'forward + backward' if backward else 'forward'}: TFLOP/s (% of peak)",
                  f"{'N':>6}" + "".join(f" {name:>15}" for name in names)]
        for n in record["setting"]["ns"]:
            cells = []
            for name in names:
                r = _find(results, implementation=name, dtype=dtype, d=d, causal=causal,
                          backward=backward, n=n)
                if r is None:
                    cells.append(f" {'':>15}")
                elif r["status"] == "ok":
                    share = "" if r["percent_of_peak"] is None else \
                        f" ({r['percent_of_peak']:.0f}%)"
                    noisy = "~" if r["iqr_s"] > measure.MAX_SPREAD * r["median_s"] else ""
                    cells.append(f" {noisy:>1}{r['tflops']:>8.3g}{share:>6}")
                else:
                    cells.append(f" {short[r['status']]:>15}")
            lines.append(f"{n:>6}" + "".join(cells))
    if any(r["status"] == "ok" and r["iqr_s"] > measure.MAX_SPREAD * r["median_s"]
           for r in results):
        lines += ["", f"~: its repeats disagree by more than {measure.MAX_SPREAD:.0%} of their "
                  "median: too noisy to compare with its neighbours; rerun on a quieter "
                  "machine."]
    reasons = {(r["implementation"], r["dtype"], r["d"]): r["reason"] for r in results
               if r["status"] == "unavailable"}
    if reasons:
        lines += ["", "n/a: the implementation cannot run that setting here:"]
        lines += [f"  {name} ({dtype}, d = {d}): {why}" for (name, dtype, d), why
                  in reasons.items()]
    return "\n".join(lines)


def plot_comparison(record, ax, dtype, d, causal=True, backward=False, value="tflops"):
    """Draw one setting of a record: `value` ("tflops" or "peak_bytes") of each
    implementation against N on log axes; a cross marks the first N that did not fit."""
    results = [r for r in record["results"] if (r["dtype"], r["d"], r["causal"],
                                                 r["backward"]) == (dtype, d, causal, backward)]
    scale = 1 if value == "tflops" else 2**20
    for name in dict.fromkeys(r["implementation"] for r in results):
        mine = [r for r in results if r["implementation"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        if not ok:
            continue
        line, = ax.plot([r["n"] for r in ok], [r[value] / scale for r in ok], "o-", label=name)
        failed = next((r for r in mine if r["status"] == "does not fit"), None)
        if failed is not None:
            ax.plot([failed["n"]], [ok[-1][value] / scale], "x", color=line.get_color(),
                    markersize=10)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N (tokens)")
    ax.set_ylabel("TFLOP/s" if value == "tflops" else "peak memory (MiB)")
    ax.set_title(f"{dtype}, d = {d}, {'causal' if causal else 'full'}, "
                 f"{'forward + backward' if backward else 'forward'}")
    return ax


# --- the command -------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m attnlib.benchmark",
        description="Time and measure naive, tiled (FlashAttention in PyTorch) and PyTorch's "
                    "fused attention, in one run.")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d", type=int, default=64, help="head width d_k = d_v")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for timing (default: torch's current number)")
    parser.add_argument("--n", type=int, nargs="*", default=[1024, 2048, 4096],
                        help="sequence lengths to time")
    parser.add_argument("--memory-n", type=int, nargs="*", default=[1024, 2048, 4096, 8192],
                        help="sequence lengths whose peak memory is measured (default: "
                             "%(default)s; naive attention at 8192 with 8 heads in float32 "
                             "needs about 6 GiB of free memory, so pass smaller sizes on a "
                             "smaller machine)")
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS),
                        choices=list(IMPLEMENTATIONS))
    parser.add_argument("--block-q", type=int, default=flash.BLOCK_Q)
    parser.add_argument("--block-k", type=int, default=flash.BLOCK_K)
    parser.add_argument("--min-run-time", type=float, default=1.0,
                        help="seconds of repeated calls behind each timing")
    parser.add_argument("--sweep-blocks", action="store_true",
                        help="only time the tiled forward at the largest --n per block size")
    parser.add_argument("--scaling", nargs="*", type=int, metavar="N",
                        help="only chapter 5's measurement: naive attention's time and memory "
                             "at these N (default 4096 6144 8192) and its fitted exponent")
    parser.add_argument("--record", choices=sorted(SWEEPS), metavar="SWEEP",
                        help="only the comparison of chapter 7: naive, tiled, Triton and each "
                             "SDPA backend, forward and backward, against N; 'full' (H100 "
                             "class, about 8 min), 'quick' (T4, about 3 min) or 'cpu'; "
                             "writes the record into --record-dir")
    parser.add_argument("--record-dir", default="records", help="where --record writes")
    parser.add_argument("--json", metavar="PATH", help="also write all figures to PATH")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.scaling is not None:
        print("\n".join(scaling(args.scaling or (4096, 6144, 8192))))
        return None
    if args.record:
        record = record_sweep(args.record, args.device, progress=None if args.quiet else
                              lambda line: print(line, file=sys.stderr, flush=True))
        path = record_path(record, args.record_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(format_comparison(record) + f"\n\nrecord written to {path}")
        return record
    setting = Setting(args.device, args.dtype, args.batch, args.heads, args.d, args.threads)

    def progress(line):
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    implementations = {name: IMPLEMENTATIONS[name] for name in args.implementations}
    if "tiled" in implementations:
        implementations["tiled"] = functools.partial(
            flash.flash_attention, block_q=args.block_q, block_k=args.block_k)
    matmul = matmul_gflops(setting, min_run_time=args.min_run_time)
    print(header(setting, args.block_q, args.block_k, matmul), flush=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "device": describe_device(setting.device), "torch": torch.__version__,
              "python": platform.python_version(), "setting": asdict(setting),
              "block_q": args.block_q, "block_k": args.block_k, "matmul_gflops": matmul}
    if args.sweep_blocks:
        sizes = [(bq, bk) for bq in (128, 256, 512, 1024) for bk in (128, 256, 512)]
        record["sweep"] = sweep_blocks(max(args.n), setting, sizes,
                                       min_run_time=args.min_run_time, progress=progress)
        print("\n" + format_sweep(record["sweep"]))
    else:
        if args.n:
            record["times"] = time_forward(args.n, setting, implementations,
                                           min_run_time=args.min_run_time, progress=progress)
            print("\n" + format_times(record["times"], matmul), flush=True)
        if args.memory_n and torch.device(args.device).type not in ("cpu", "cuda"):
            print(f"\nPeak memory: not measurable on {args.device} (only cpu and cuda)")
        elif args.memory_n:
            record["memory"] = measure_memory(args.memory_n, setting, implementations,
                                              progress=progress)
            print("\n" + format_memory(record["memory"]))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=1)
    return record


if __name__ == "__main__":
    main()
