"""Measuring what a call really costs: time, peak memory, FLOPs, operators, page faults.

Chapters 5 to 8 and `attnlib.benchmark` measure through this module, so that every
figure of the course is taken the same way:

- `attention_inputs` makes the random q, k, v of a size (the same for a seed, any device);
- `time_call` times one call with torch.utils.benchmark (median and spread of repeats);
- `peak_memory` takes the peak of torch's allocations during a call: on CUDA from
  torch.cuda's peak counters, on the CPU from the allocations and frees that torch's
  profiler records (tracemalloc cannot see them, and the process's resident size mixes in
  Python and allocator caches);
- `measure` does both for a list of sizes, and counts what the timed calls cost the
  operating system; `fit_exponent` and `fit_power_law` read the power law off the result;
- `counted_flops` counts the FLOPs a call really runs, `cpu_op_times` says which of
  torch's operators the time went to, and `page_faults` what a call cost the operating
  system (fresh pages of memory, kernel time);
- `judge_growth`, `judge_ratio` and `judge_repeats` turn timings into a sentence to
  print: the finding with its noise, or "too noisy to tell" when the noise makes the
  figure meaningless (`MAX_SPREAD`, `MAX_RESIDUAL`).
"""

import contextlib
import math
import numbers
import os
import string
import sys
from collections.abc import Sequence
from typing import NamedTuple

import torch

from attnlib._checks import require_float_dtype, require_positive_int


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence file descriptor 2 for a while.

    torch's profiler logs from C++ straight to descriptor 2, past Python's sys.stderr,
    and Jupyter shows those lines as a warning under the cell.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(fn):
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with quiet_native_stderr(), profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
        with_stack=True,
    ) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def peak_memory(fn, device="cpu"):
    """Peak bytes that torch allocates on `device` while `fn()` runs, above what was
    allocated before (inputs that already exist are not counted; outputs are).

    device: "cpu" (from the profiler's allocation record) or "cuda" (from
    torch.cuda.max_memory_allocated).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device.type!r}")


def counted_flops(fn):
    """FLOPs of the matrix products that `fn()` runs, as PyTorch's FlopCounterMode counts
    them while it runs (2 per multiply-add; element-wise work such as the softmax is not
    counted, and neither are fused kernels it has no formula for, such as the CPU's)."""
    from torch.utils.flop_counter import FlopCounterMode

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def cpu_op_times(fn, runs=3):
    """Seconds per call of `fn()` spent inside each torch operator on the CPU, from
    torch.profiler, largest first: {"aten::bmm": 0.012, "aten::exp": 0.004, ...}.

    Self time: an operator that calls others (aten::matmul calls aten::bmm) is charged
    only for its own work, so the values add up to the time spent in torch.
    """
    from torch.profiler import ProfilerActivity, profile

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    require_positive_int("runs", runs)
    fn()  # warm-up: one-off allocations and kernel choices stay out of the record
    with quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    times = {event.key: event.self_cpu_time_total / 1e6 / runs for event in prof.key_averages()}
    return dict(sorted(((op, t) for op, t in times.items() if t > 0), key=lambda item: -item[1]))


class PageFaults(NamedTuple):
    """What one call cost the operating system, from `page_faults` (and `measure`)."""

    faults: float  #: minor page faults: pages of memory the OS supplied on first touch
    kernel_seconds: float  #: CPU time spent in the OS kernel, all threads together
    cpu_seconds: float  #: all CPU time, user and kernel, all threads together
    page_bytes: int  #: the system's page size (a fault may map a larger "huge" page)


def _os_counters():
    """This process's resource usage (all threads), or None where Python's `resource`
    module does not exist (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF)


def _per_call(before, after, calls):
    import resource

    kernel = after.ru_stime - before.ru_stime
    user = after.ru_utime - before.ru_utime
    return PageFaults((after.ru_minflt - before.ru_minflt) / calls, kernel / calls,
                      (kernel + user) / calls, resource.getpagesize())


def page_faults(fn, runs=3):
    """Page faults and CPU time per call of `fn()`, the mean of `runs` calls after one
    warm-up call, from the operating system's counters for this process (getrusage).

    A minor page fault is a page (4 KiB on most systems) that the OS maps into the
    process, cleared, the first time it is touched: the cost of memory newly obtained
    from the OS rather than reused.  Returns a `PageFaults(faults, kernel_seconds,
    cpu_seconds, page_bytes)`, or None where Python's `resource` module does not exist
    (Windows).  `measure` takes the same counts over its timed calls.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    require_positive_int("runs", runs)
    if _os_counters() is None:
        return None
    fn()
    before = _os_counters()
    for _ in range(runs):
        fn()
    return _per_call(before, _os_counters(), runs)


def attention_inputs(n, d=64, heads=1, batch=1, dtype=torch.float32, device="cpu", seed=0):
    """Random q, k, v of shape (batch, heads, n, d), standard normal, the same for a seed
    whatever the device."""
    for name, value in (("n", n), ("d", d), ("heads", heads), ("batch", batch)):
        require_positive_int(name, value)
    require_float_dtype(dtype)
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, d, generator=generator).to(device, dtype)
                 for _ in range(3))


class Timing(NamedTuple):
    """Seconds per call, from `time_call`."""

    median: float  #: median over the timed blocks of calls
    iqr: float  #: interquartile range of the blocks: how much repeats disagree

    @property
    def spread(self):
        """iqr / median: 0.05 means repeats agree within about 5%."""
        return self.iqr / self.median


def _require_seconds(name, seconds):
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {seconds!r}")


#: Fewest timed blocks behind a `time_call` median: with one block its spread would be 0
#: whatever the noise, and three let the median ignore one disturbed block.
MIN_REPEATS = 3


def time_call(fn, *args, min_run_time=0.1, max_run_time=1.0, threads=None):
    """Seconds per call of `fn(*args)`, as a `Timing(median, iqr)`.

    torch.utils.benchmark's adaptive_autorange, with `threads` threads (default: all of
    torch's): blocks of calls, for at least `min_run_time` seconds and until the spread
    of the blocks is below 10% of their median or `max_run_time` seconds have passed (a
    busy machine gets more samples), and never fewer than `MIN_REPEATS` blocks (a call
    slower than `max_run_time` is timed that many times).  It synchronises CUDA, so GPU
    times are real.
    """
    from torch.utils import benchmark

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    _require_seconds("min_run_time", min_run_time)
    _require_seconds("max_run_time", max_run_time)
    threads = torch.get_num_threads() if threads is None else threads
    require_positive_int("threads", threads)
    timer = benchmark.Timer("fn(*args)", globals={"fn": fn, "args": args}, num_threads=threads)
    result = timer.adaptive_autorange(min_run_time=min_run_time,
                                      max_run_time=max(max_run_time, min_run_time))
    if len(result.raw_times) < MIN_REPEATS:
        # more blocks of the same size, timed by the same timer (_timeit: one block, no
        # warm-up; it is what adaptive_autorange itself calls), on the same threads
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            extra = [timer._timeit(result.number_per_run)
                     for _ in range(MIN_REPEATS - len(result.raw_times))]
        finally:
            torch.set_num_threads(saved)
        result = benchmark.Measurement(result.number_per_run, [*result.raw_times, *extra],
                                       result.task_spec)
    return Timing(result.median, result.iqr)


class Measurement(NamedTuple):
    """One size of a `measure` run."""

    n: int  #: the size passed to make_inputs
    seconds: float  #: median wall time of one call
    peak_bytes: int | None  #: peak of torch's allocations in one call (None: not measured)
    spread: float  #: iqr / median of the timing: how much repeats disagree
    #: what one timed call cost the operating system, the mean over the timed calls after
    #: the first: `PageFaults(faults, kernel_seconds, cpu_seconds, page_bytes)`; None where
    #: the OS does not report it (Windows) or a single call was timed
    os_cost: PageFaults | None = None

    @property
    def fresh_bytes(self):
        """Bytes of memory per call that the OS supplied afresh (page faults x page size;
        fewer where it maps larger "huge" pages), or None where not counted."""
        return None if self.os_cost is None else self.os_cost.faults * self.os_cost.page_bytes


class _CountedCalls:
    """fn, counting its calls and, from the end of the first call on, the OS's counters:
    the first call is the warm-up that torch.utils.benchmark makes anyway."""

    def __init__(self, fn):
        self.fn, self.calls, self.start = fn, 0, None

    def __call__(self, *args):
        result = self.fn(*args)
        self.calls += 1
        if self.calls == 1:
            self.start = _os_counters()
        return result

    def os_cost(self):
        if self.start is None or self.calls < 2:
            return None
        return _per_call(self.start, _os_counters(), self.calls - 1)


def _in_notebook():
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _progress_bar(total):
    """An ipywidgets bar in a Jupyter kernel (nothing on stderr), None anywhere else."""
    if not _in_notebook():
        return None
    import ipywidgets
    from IPython.display import display

    bar = ipywidgets.IntProgress(value=0, min=0, max=total, description="measuring",
                                 style={"description_width": "initial"})
    display(bar)
    return bar


def measure(fn, sizes, make_inputs=attention_inputs, *, memory=True, min_run_time=0.1,
            max_run_time=1.0, progress=True, label="N"):
    """Time `fn(*make_inputs(n))` for each n in `sizes`, and take its peak memory.

    Time: `time_call` (the median of repeats, and their spread), and what the timed calls
    cost the operating system (`os_cost`, as `page_faults` counts it: the memory it
    supplied afresh, the kernel time), in the state in which they were timed.  Memory
    (when `memory`): `peak_memory` on the inputs' device (CPU or CUDA), measured after the
    timing runs so that one-off workspaces are already there.  In a Jupyter notebook,
    `progress` shows a progress bar captioned with `label`.  Returns a list of
    `Measurement(n, seconds, peak_bytes, spread, os_cost)`.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not callable(make_inputs):
        raise TypeError(f"make_inputs must be callable, got {type(make_inputs).__name__}")
    sizes = list(sizes)
    if not sizes:
        raise ValueError("sizes must hold at least one size, got none")
    for n in sizes:
        require_positive_int("each size", n)
    _require_seconds("min_run_time", min_run_time)
    _require_seconds("max_run_time", max_run_time)
    bar = _progress_bar(len(sizes)) if progress else None
    results = []
    for n in sizes:
        if bar is not None:
            bar.description = f"{label} = {n}"
        args = make_inputs(n)
        if isinstance(args, torch.Tensor):
            args = (args,)
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), "cpu")
        counted = _CountedCalls(fn)
        timing = time_call(counted, *args, min_run_time=min_run_time, max_run_time=max_run_time)
        os_cost = counted.os_cost()
        peak = peak_memory(lambda args=args: fn(*args), device) if memory else None
        results.append(Measurement(n, timing.median, peak, timing.spread, os_cost))
        del args  # free this size's inputs before making the next ones
        if bar is not None:
            bar.value += 1
    if bar is not None:
        bar.description = f"{label}: measured {len(sizes)} sizes"
        bar.bar_style = "success"
    return results


class PowerLawFit(NamedTuple):
    """The power law values ~ c * sizes^exponent that fits best, from `fit_power_law`."""

    exponent: float  #: p, the slope of the least-squares line through (log size, log value)
    #: how far the farthest point lies from that line, as a fraction: 0.05 means every
    #: value is within 5% of the fitted law (0 for two points: a line through both)
    residual: float


def fit_power_law(sizes, values):
    """The least-squares power law through (size, value): `PowerLawFit(exponent, residual)`.

    exponent = slope of the line through (log size, log value); residual = exp(max abs(log
    value - fitted log value)) - 1, how far the worst point lies off the law.
    """
    sizes, values = list(sizes), list(values)
    if len(sizes) != len(values) or len(sizes) < 2:
        raise ValueError(f"sizes and values must be two sequences of the same length >= 2, "
                         f"got lengths {len(sizes)} and {len(values)}")
    if min(sizes) <= 0 or min(values) <= 0:
        raise ValueError("sizes and values must all be > 0 (a power law is fitted on log axes), "
                         f"got min(sizes) = {min(sizes)} and min(values) = {min(values)}")
    x = [math.log(s) for s in sizes]
    y = [math.log(v) for v in values]
    x_mean, y_mean = sum(x) / len(x), sum(y) / len(y)
    spread = sum((a - x_mean) ** 2 for a in x)
    if spread == 0:
        raise ValueError(f"sizes must not all be equal, got {sizes}")
    slope = sum((a - x_mean) * (b - y_mean) for a, b in zip(x, y, strict=True)) / spread
    return PowerLawFit(slope, math.expm1(max(map(abs, _log_residuals(x, y, slope)))))


def _log_residuals(x, y, slope):
    """log value - fitted log value, for each point (x, y) = (log size, log value)."""
    x_mean, y_mean = sum(x) / len(x), sum(y) / len(y)
    return [b - y_mean - slope * (a - x_mean) for a, b in zip(x, y, strict=True)]


def fit_exponent(sizes, values):
    """The exponent p of the power law values ~ c * sizes^p that fits best: the slope of
    the least-squares line through (log size, log value) (`fit_power_law`'s exponent)."""
    return fit_power_law(sizes, values).exponent


# --- judging the noise: a figure, or "too noisy to tell" ----------------------------------

#: Largest spread (interquartile range / median of the repeats) of a timing on which a
#: finding may rest.  `time_call` aims at 0.1 on a quiet machine.
MAX_SPREAD = 0.2

#: Largest fit residual (`PowerLawFit.residual`) of a fitted exponent that is reported.
MAX_RESIDUAL = 0.1

_RERUN = "rerun on a quieter machine"


class Verdict(NamedTuple):
    """A measured figure and whether the noise allows reporting it; str() is the sentence.

    From `judge_growth`, `judge_ratio` and `judge_repeats`.
    """

    value: float  #: the figure: an exponent, a ratio, a median
    meaningful: bool  #: False when spread or residual exceed their limits
    #: the largest spread of the timings it rests on (for a size measured twice, including
    #: the disagreement between the two)
    spread: float
    residual: float  #: the fit's residual (`PowerLawFit.residual`); 0 where nothing is fitted
    sentence: str  #: the finding with its noise, or "too noisy to tell: ..."
    #: the measurements it rests on (from `judge_growth` with `fn`: of each size, the faster
    #: of its two timings)
    measurements: tuple = ()

    def __str__(self):
        return self.sentence


def _check_judgement(finding, label, max_spread, max_residual=MAX_RESIDUAL):
    if not isinstance(finding, str):
        raise TypeError(f"finding must be a str such as 'grows like N^{{:.2f}}', "
                        f"got {type(finding).__name__}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(finding) if f is not None]
        finding.format(1.0)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        fields = None
    if fields is None or len(fields) != 1:
        raise ValueError(f"finding must be a format string with one {{}} field for the value, "
                         f"got {finding!r}")
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str or None, got {type(label).__name__}")
    for name, limit in (("max_spread", max_spread), ("max_residual", max_residual)):
        if isinstance(limit, bool) or not isinstance(limit, numbers.Real) or not limit > 0:
            raise ValueError(f"{name} must be a number > 0, got {limit!r}")


def _verdict(value, spread, residual, finding, label, max_spread, max_residual, *,
             measurements=(), note=""):
    """The Verdict and its sentence; residual None: nothing was fitted (or two points)."""
    meaningful = spread <= max_spread and (residual is None or residual <= max_residual)
    prefix = f"{label}: " if label else ""
    if meaningful:
        fitted = "" if residual is None else f", points within {residual:.0%} of the power law"
        sentence = (f"{prefix}{finding.format(value)} (repeats agree within {spread:.0%}"
                    f"{fitted}{note})")
    elif spread <= max_spread:  # steady repeats, but the points do not lie on one line
        sentence = (f"{prefix}no single power law: the points stray up to {residual:.0%} from "
                    f"the best line (repeats agree within {spread:.0%}{note}); the growth "
                    "changes over these sizes, so no exponent is given")
    else:
        fitted = "" if residual is None else f", fit residual {residual:.0%}"
        sentence = (f"{prefix}too noisy to tell: spread up to {spread:.0%}{fitted}{note}; "
                    f"{_RERUN}")
    return Verdict(value, meaningful, spread, residual or 0.0, sentence, tuple(measurements))


def _disagreement(first, second):
    """How much two measurements of one size disagree: abs(t1 - t2) / min(t1, t2)."""
    return abs(first.seconds - second.seconds) / min(first.seconds, second.seconds)


def _both(first, second):
    """One size measured twice: the faster of the two (load on the machine only ever slows
    a call down), with the larger of their spreads and of their disagreement as its
    spread."""
    faster = min(first, second, key=lambda m: m.seconds)
    return faster._replace(spread=max(first.spread, second.spread,
                                      _disagreement(first, second)))


def _measure_again(fn, sizes, make_inputs):
    """{n: Measurement} of fn at each size, timed largest first, without peak memory."""
    runs = measure(fn, sorted(sizes, reverse=True), make_inputs, memory=False, progress=False)
    return {m.n: m for m in runs}


def judge_growth(measurements, finding="time grows like N^{:.2f}", *, label=None, fn=None,
                 make_inputs=attention_inputs, max_spread=MAX_SPREAD,
                 max_residual=MAX_RESIDUAL):
    """Fit the time exponent of `measurements` and judge whether noise allows reporting it.

    measurements: two or more `Measurement`s of one function at different sizes (from
    `measure`).  With `fn` (that function; `make_inputs` as given to `measure`), every
    size is measured once more, largest first: load that lasts through one size's timing
    does not show in that timing's spread, only when the size is timed again at another
    moment.  A size whose two medians disagree by more than `max_spread` is measured a
    third time, and the slowest of the three is set aside (load on the machine only ever
    slows a call down).  Of each size's two measurements the faster stands for it, with
    the larger of the two spreads and of their disagreement, abs(t1 - t2) / min(t1, t2), as
    its spread.

    The exponent is `fit_power_law` of seconds against n.  It is reported when every
    spread is at most `max_spread` and the fit residual at most `max_residual` (with two
    sizes there is no residual).  Returns a `Verdict` whose sentence is
    `label: finding.format(exponent) (noise)`, or `label: too noisy to tell: spread up to
    X%, fit residual Y%; rerun on a quieter machine`; `verdict.measurements` holds the
    measurements it rests on (a size measured again keeps its first peak_bytes: memory
    does not depend on the machine's load).
    """
    _check_judgement(finding, label, max_spread, max_residual)
    if fn is not None and not callable(fn):
        raise TypeError(f"fn must be callable or None, got {type(fn).__name__}")
    if not isinstance(measurements, Sequence) or not all(
            isinstance(m, Measurement) for m in measurements):
        raise TypeError(f"measurements must be a list of Measurement (from measure), "
                        f"got {measurements!r:.80}")
    if len({m.n for m in measurements}) != len(measurements) or len(measurements) < 2:
        raise ValueError(f"measurements must hold two or more different sizes to fit, got "
                         f"sizes {[m.n for m in measurements]}")
    runs, note = list(measurements), ""
    if fn is not None:
        second = _measure_again(fn, [m.n for m in runs], make_inputs)
        pairs = {m.n: (m, second[m.n]) for m in runs}
        apart = [n for n, (a, b) in pairs.items() if _disagreement(a, b) > max_spread]
        if apart:  # a third chance; load only ever slows a call down: drop the slowest
            third = _measure_again(fn, apart, make_inputs)
            for n in apart:
                pairs[n] = sorted([*pairs[n], third[n]], key=lambda m: m.seconds)[:2]
        runs = [_both(*pairs[m.n])._replace(peak_bytes=m.peak_bytes) for m in runs]
        note = "; each size measured twice" + (
            f", N = {', '.join(map(str, sorted(apart)))} three times" if apart else "")
    fit = fit_power_law([m.n for m in runs], [m.seconds for m in runs])
    residual = fit.residual if len(runs) > 2 else None
    return _verdict(fit.exponent, max(m.spread for m in runs), residual, finding, label,
                    max_spread, max_residual, measurements=runs, note=note)


def judge_ratio(numerator, denominator, finding="{:.1f} times as long", *, label=None,
                max_spread=MAX_SPREAD):
    """numerator.seconds / denominator.seconds, judged by the larger of their spreads.

    numerator, denominator: `Measurement`s (or `Timing`s) of two functions, best from one
    run at the same size.  Returns a `Verdict`: the finding with its noise, or "too noisy
    to tell" when either spread exceeds `max_spread`.  Timings that `judge_growth` measured
    twice (`verdict.measurements`) carry the disagreement of the two in their spread.
    """
    _check_judgement(finding, label, max_spread)
    values = []
    for name, m in (("numerator", numerator), ("denominator", denominator)):
        if isinstance(m, Measurement):
            values.append((m.seconds, m.spread))
        elif isinstance(m, Timing):
            values.append((m.median, m.spread))
        else:
            raise TypeError(f"{name} must be a Measurement or a Timing, got {type(m).__name__}")
    (top, top_spread), (bottom, bottom_spread) = values
    return _verdict(top / bottom, max(top_spread, bottom_spread), None, finding, label,
                    max_spread, MAX_RESIDUAL)


def judge_repeats(values, finding="{:.2f}", *, label=None, max_spread=MAX_SPREAD):
    """The median of repeated measurements of one quantity, judged by their spread.

    values: two or more numbers > 0 (the same figure measured again and again, such as a
    share of the time from separate profiler runs).  spread = interquartile range / median,
    as `time_call` computes it.  Returns a `Verdict`.
    """
    _check_judgement(finding, label, max_spread)
    values = [float(v) for v in values]
    if len(values) < 2 or min(values) <= 0:
        raise ValueError(f"values must be two or more numbers > 0, got {values}")
    p25, median, p75 = torch.tensor(values, dtype=torch.float64).quantile(
        torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return _verdict(median, (p75 - p25) / median, None, finding, label, max_spread, MAX_RESIDUAL)
