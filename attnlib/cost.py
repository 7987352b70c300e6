"""Chapter 5: the cost of attention, counted and measured.

Counting: `attention_flops` and `projection_flops` (forward FLOPs, 2 per multiply-add),
`score_matrix_bytes` (the N x N matrices) and `kv_cache_bytes` (what generation keeps
instead), against the memory of real GPUs in `GPU_MEMORY`.

Measuring: `measure` times a function with torch.utils.benchmark and takes its peak
memory with `peak_memory`, size after size; `fit_exponent` reads the power law off the
result; `counted_flops` counts the FLOPs a function really runs, `cpu_op_times` says
which of torch's operators the time went to, and `page_faults` what a call cost the
operating system (fresh pages of memory, kernel time).  `python -m attnlib.cost` prints
the time exponent and the memory agreement of naive attention on this machine.

Memory is measured where torch allocates it: on CUDA with torch.cuda's peak counters,
on the CPU from the allocations and frees that torch's profiler records (tracemalloc
cannot see them, and the process's resident size mixes in Python and allocator caches).

Two attention variants for the experiments: `inplace_attention` holds one N x N matrix
where chapter 2's clear version holds three, and `sliding_window_attention` holds
N x 2*window scores (three such, with chapter 2's softmax), so its cost grows linearly
in N.
"""

import contextlib
import math
import numbers
import os
import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F

from attnlib._checks import require_positive_int
from attnlib.attention import additive_mask, softmax, validate_qkv

#: Bytes in a gigabyte, the decimal unit used for every size in this module
#: (1 GiB = 2**30 bytes is 7% more).
GB = 10**9

#: Nominal memory of three GPUs, the round numbers of the vendors' specification pages,
#: taken here as decimal GB:
#: T4 https://www.nvidia.com/en-us/data-center/tesla-t4/ (16 GB),
#: A100 https://www.nvidia.com/en-us/data-center/a100/ (80 GB model),
#: H200 https://www.nvidia.com/en-us/data-center/h200/ (141 GB).
#: They are not exact byte counts: nvidia-smi reports an A100 80GB as 81,920 MiB
#: (80 GiB, 85.9 GB) and a T4 as 15,360 MiB, and the driver keeps some for itself, so
#: what a program can use differs from these by a few percent (up to about 7%).
GPU_MEMORY = {"T4": 16 * GB, "A100 80GB": 80 * GB, "H200": 141 * GB}


# --- counting --------------------------------------------------------------------------


def attention_flops(n, d, heads=1, batch=1, causal=False):
    """Forward FLOPs of attention: 4 * batch * heads * n^2 * d, half that with a causal mask.

    Two matrix products of n x n x d multiply-adds each (Q K^T and A V), 2 FLOPs per
    multiply-add; the softmax's O(n^2) is left out, as is usual.
    """
    for name, value in (("n", n), ("d", d), ("heads", heads), ("batch", batch)):
        require_positive_int(name, value)
    flops = 4 * batch * heads * n * n * d
    return flops // 2 if causal else flops


def projection_flops(n, d_model, batch=1):
    """Forward FLOPs of an attention layer's four projections: 8 * batch * n * d_model^2.

    W_Q, W_K, W_V and the output projection W_O each map n tokens from width d_model to
    d_model (heads * d_k = d_model, as usual): n x d_model x d_model multiply-adds each.
    Linear in n, where `attention_flops(n, d_model // heads, heads)` = 4 n^2 d_model is
    quadratic: attention costs more from n = 2 * d_model on.
    """
    for name, value in (("n", n), ("d_model", d_model), ("batch", batch)):
        require_positive_int(name, value)
    return 4 * 2 * batch * n * d_model * d_model


def _element_bytes(dtype):
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"dtype must be a torch dtype such as torch.float16, got {type(dtype).__name__} "
            f"{dtype!r}"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype such as torch.float16, got {dtype}")
    return dtype.itemsize


def score_matrix_bytes(n, heads=1, layers=1, batch=1, dtype=torch.float16):
    """Bytes of the N x N matrices: batch * layers * heads * n^2 * (bytes per element).

    One n x n matrix per head, per layer, per sequence of the batch.  Inference needs one
    layer's matrices at a time (layers=1); training keeps every layer's attention
    weights for the backward pass.  An implementation that keeps several n x n
    intermediates alive at once (scores, exponentials, weights) needs a multiple of this.
    """
    for name, value in (("n", n), ("heads", heads), ("layers", layers), ("batch", batch)):
        require_positive_int(name, value)
    return batch * layers * heads * n * n * _element_bytes(dtype)


def kv_cache_bytes(n, head_dim, heads=1, layers=1, batch=1, dtype=torch.float16):
    """Bytes of the key/value cache for n tokens: 2 * batch * layers * heads * n * head_dim
    * (bytes per element).

    Generation stores every earlier token's key and value (2 vectors of head_dim per
    head and layer) instead of an n x n matrix: linear in n.  With grouped-query
    attention, `heads` is the number of key/value heads.
    """
    for name, value in (("n", n), ("head_dim", head_dim), ("heads", heads), ("layers", layers),
                        ("batch", batch)):
        require_positive_int(name, value)
    return 2 * batch * layers * heads * n * head_dim * _element_bytes(dtype)


# --- two attention variants ------------------------------------------------------------


def _resolve_scale(scale, d_k):
    if scale is None:
        return 1.0 / math.sqrt(d_k)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number or None, got {type(scale).__name__}")
    return scale


def inplace_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """softmax(Q K^T * scale + mask) V holding a single N x N matrix at a time.

    Same arguments and result as `attention.scaled_dot_product_attention` (chapter 2),
    but the scores are turned into weights in place: shift, exp and normalise overwrite
    them, where chapter 2's clearer code keeps scores, exponentials and weights alive
    together (three matrices).  In-place steps destroy what autograd would need, so
    inputs must not require gradients.  Masks cost extra while they are applied: an
    N x N boolean for is_causal, a float copy of a boolean attn_mask.
    """
    batch_shape = validate_qkv(q, k, v)
    if any(t.requires_grad for t in (q, k, v)) and torch.is_grad_enabled():
        raise ValueError("inplace_attention cannot backpropagate (its in-place steps overwrite "
                         "what autograd needs): call it under torch.no_grad(), or use "
                         "attention.scaled_dot_product_attention")
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in PyTorch)")
    n_queries, n_keys = q.shape[-2], k.shape[-2]
    scores = (q * _resolve_scale(scale, q.shape[-1])) @ k.mT  # scaling q costs N x d, not N^2
    if is_causal:
        future = torch.ones(n_queries, n_keys, dtype=torch.bool, device=q.device).triu_(1)
        scores.masked_fill_(future, -math.inf)
    elif attn_mask is not None:
        scores.add_(additive_mask(attn_mask, q, n_keys, batch_shape))
    if n_keys:
        row_max = scores.amax(dim=-1, keepdim=True)
        scores.sub_(torch.where(torch.isfinite(row_max), row_max, 0.0)).exp_()
        total = scores.sum(dim=-1, keepdim=True)
        scores.div_(torch.where(total == 0, 1.0, total))  # a row that sees no key: zeros
    return scores @ v


def sliding_window_attention(q, k, v, window, scale=None):
    """Causal sliding-window attention: query i attends to keys max(0, i - window + 1) .. i.

    q, k: (..., N, d_k), v: (..., N, d_v) -> (..., N, d_v); same as full attention with
    the band mask 0 <= i - j < window.  The N positions are cut into blocks of `window`;
    each block of queries meets its own block of keys and the one before, so the scores
    are N x 2*window instead of N x N: time and memory grow like N * window.
    """
    batch_shape = validate_qkv(q, k, v)
    require_positive_int("window", window)
    n = q.shape[-2]
    if k.shape[-2] != n:
        raise ValueError(f"sliding_window_attention is self-attention: q and k must have the "
                         f"same length N, got q of shape {tuple(q.shape)} and k of shape "
                         f"{tuple(k.shape)}")
    if n == 0:
        return v.new_zeros(*batch_shape, 0, v.shape[-1])
    scale = _resolve_scale(scale, q.shape[-1])
    pad = -n % window
    blocks = (n + pad) // window

    def to_blocks(t):  # (..., N, d) -> (..., blocks, window, d), zero-padded at the end
        t = F.pad(t, (0, 0, 0, pad)) if pad else t
        return t.reshape(*t.shape[:-2], blocks, window, t.shape[-1])

    def with_previous_block(t):  # (..., blocks, window, d) -> (..., blocks, 2 * window, d)
        previous = F.pad(t, (0, 0, 0, 0, 1, 0))[..., :-1, :, :]
        return torch.cat([previous, t], dim=-2)

    scores = (to_blocks(q) * scale) @ with_previous_block(to_blocks(k)).mT
    # query r of block b is position i = b*w + r; key c of the pair is j = (b-1)*w + c
    r = torch.arange(window, device=q.device)[:, None]
    c = torch.arange(2 * window, device=q.device)
    scores = scores.masked_fill((c <= r) | (c > r + window), -math.inf)  # not 0 <= i-j < w
    scores[..., 0, :, :window] = -math.inf  # block 0 has no block before it
    weights = softmax(scores, dim=-1)
    out = weights @ with_previous_block(to_blocks(v))
    return out.reshape(*out.shape[:-3], blocks * window, out.shape[-1])[..., :n, :]


# --- measuring -------------------------------------------------------------------------


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
    _element_bytes(dtype)
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, d, generator=generator).to(device, dtype)
                 for _ in range(3))


class Measurement(NamedTuple):
    """One size of a `measure` run."""

    n: int  #: the size passed to make_inputs
    seconds: float  #: median wall time of one call
    peak_bytes: int | None  #: peak of torch's allocations in one call (None: not measured)


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

    Time: the median of torch.utils.benchmark's adaptive_autorange with all of torch's
    threads: blocks of calls, for at least `min_run_time` seconds and until the spread
    of the blocks is below 10% of their median or `max_run_time` seconds have passed
    (a busy machine gets more samples).  Memory (when `memory`): `peak_memory` on the
    inputs' device (CPU or CUDA), measured after the timing runs so that one-off
    workspaces are already there.  In a Jupyter notebook, `progress` shows a progress
    bar captioned with `label`.  Returns a list of `Measurement(n, seconds, peak_bytes)`.
    """
    from torch.utils import benchmark

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not callable(make_inputs):
        raise TypeError(f"make_inputs must be callable, got {type(make_inputs).__name__}")
    sizes = list(sizes)
    if not sizes:
        raise ValueError("sizes must hold at least one size, got none")
    for n in sizes:
        require_positive_int("each size", n)
    for name, seconds in (("min_run_time", min_run_time), ("max_run_time", max_run_time)):
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not seconds > 0:
            raise ValueError(f"{name} must be a number of seconds > 0, got {seconds!r}")
    bar = _progress_bar(len(sizes)) if progress else None
    results = []
    for n in sizes:
        if bar is not None:
            bar.description = f"{label} = {n}"
        args = make_inputs(n)
        if isinstance(args, torch.Tensor):
            args = (args,)
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), "cpu")
        timer = benchmark.Timer("fn(*args)", globals={"fn": fn, "args": args},
                                num_threads=torch.get_num_threads())
        seconds = timer.adaptive_autorange(min_run_time=min_run_time,
                                           max_run_time=max(max_run_time, min_run_time)).median
        peak = peak_memory(lambda args=args: fn(*args), device) if memory else None
        results.append(Measurement(n, seconds, peak))
        del args, timer  # free this size's inputs before making the next ones
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


def main(sizes=(4096, 6144, 8192)):
    """`python -m attnlib.cost`: on this machine's CPU, the fitted time exponent of naive
    attention (chapter 2's) and how its peak memory agrees with 3 * score_matrix_bytes."""
    from attnlib.attention import scaled_dot_product_attention
    from attnlib.device import describe_device

    runs = measure(scaled_dot_product_attention, sizes, progress=False)
    print(f"naive attention (chapter 2), one head, d = 64, float32; {describe_device('cpu')}")
    for run in runs:
        formula = 3 * score_matrix_bytes(run.n, dtype=torch.float32)
        print(f"N = {run.n:>6}: {run.seconds * 1e3:9.2f} ms, peak {run.peak_bytes / 1e6:8.1f} MB"
              f" = {run.peak_bytes / formula:.4f} x (3 * score_matrix_bytes)")
    exponent = fit_exponent(sizes, [run.seconds for run in runs])
    print(f"time grows like N^{exponent:.2f} over N = {', '.join(map(str, sizes))}")


if __name__ == "__main__":
    main()
