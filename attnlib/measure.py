"""Measuring what a call really costs: time, peak memory, FLOPs, operators, page faults.

Chapters 5 to 8 and `attnlib.benchmark` measure through this module, so that every
figure of the course is taken the same way:

- `attention_inputs` makes the random q, k, v of a size (the same for a seed, any device);
- `time_call` times one call with torch.utils.benchmark (median and spread of repeats);
- `peak_memory` takes the peak of torch's allocations during a call: on CUDA from
  torch.cuda's peak counters, on the CPU from the allocations and frees that torch's
  profiler records (tracemalloc cannot see them, and the process's resident size mixes in
  Python and allocator caches);
- `measure` does both for a list of sizes, and `fit_exponent` reads the power law off
  the result;
- `counted_flops` counts the FLOPs a call really runs, `cpu_op_times` says which of
  torch's operators the time went to, and `page_faults` what a call cost the operating
  system (fresh pages of memory, kernel time).
"""

import contextlib
import math
import numbers
import os
import sys
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
    """What one call cost the operating system, from `page_faults`."""

    faults: float  #: minor page faults: pages of memory the OS supplied on first touch
    kernel_seconds: float  #: CPU time spent in the OS kernel, all threads together
    cpu_seconds: float  #: all CPU time, user and kernel, all threads together
    page_bytes: int  #: the system's page size (a fault may map a larger "huge" page)


def page_faults(fn, runs=3):
    """Page faults and CPU time per call of `fn()`, the mean of `runs` calls after one
    warm-up call, from the operating system's counters for this process (getrusage).

    A minor page fault is a page (4 KiB on most systems) that the OS maps into the
    process, cleared, the first time it is touched: the cost of memory newly obtained
    from the OS rather than reused.  Returns a `PageFaults(faults, kernel_seconds,
    cpu_seconds, page_bytes)`, or None where Python's `resource` module does not exist
    (Windows).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    require_positive_int("runs", runs)
    try:
        import resource
    except ImportError:
        return None
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(runs):
        fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    kernel = after.ru_stime - before.ru_stime
    user = after.ru_utime - before.ru_utime
    return PageFaults((after.ru_minflt - before.ru_minflt) / runs, kernel / runs,
                      (kernel + user) / runs, resource.getpagesize())


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


def time_call(fn, *args, min_run_time=0.1, max_run_time=1.0, threads=None):
    """Seconds per call of `fn(*args)`, as a `Timing(median, iqr)`.

    torch.utils.benchmark's adaptive_autorange, with `threads` threads (default: all of
    torch's): blocks of calls, for at least `min_run_time` seconds and until the spread
    of the blocks is below 10% of their median or `max_run_time` seconds have passed (a
    busy machine gets more samples).  It synchronises CUDA, so GPU times are real.
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
    return Timing(result.median, result.iqr)


class Measurement(NamedTuple):
    """One size of a `measure` run."""

    n: int  #: the size passed to make_inputs
    seconds: float  #: median wall time of one call
    peak_bytes: int | None  #: peak of torch's allocations in one call (None: not measured)
    spread: float  #: iqr / median of the timing: how much repeats disagree


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

    Time: `time_call` (the median of repeats, and their spread).  Memory (when
    `memory`): `peak_memory` on the inputs' device (CPU or CUDA), measured after the
    timing runs so that one-off workspaces are already there.  In a Jupyter notebook,
    `progress` shows a progress bar captioned with `label`.  Returns a list of
    `Measurement(n, seconds, peak_bytes, spread)`.
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
        timing = time_call(fn, *args, min_run_time=min_run_time, max_run_time=max_run_time)
        peak = peak_memory(lambda args=args: fn(*args), device) if memory else None
        results.append(Measurement(n, timing.median, peak, timing.spread))
        del args  # free this size's inputs before making the next ones
        if bar is not None:
            bar.value += 1
    if bar is not None:
        bar.description = f"{label}: measured {len(sizes)} sizes"
        bar.bar_style = "success"
    return results


def fit_exponent(sizes, values):
    """The exponent p of the power law values ~ c * sizes^p that fits best: the slope of
    the least-squares line through (log size, log value)."""
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
    return sum((a - x_mean) * (b - y_mean) for a, b in zip(x, y, strict=True)) / spread
