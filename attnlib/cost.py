"""Chapter 5: the cost of attention, counted and measured.

Memory is measured where torch allocates it: on CUDA with torch.cuda's peak counters,
on the CPU from the allocations and frees that torch's profiler records (tracemalloc
cannot see them, and the process's resident size mixes in Python and allocator caches).
"""

import contextlib
import os
import sys

import torch

from attnlib._checks import require_positive_int


def attention_flops(n, d, heads=1, batch=1, causal=False):
    """Forward FLOPs of attention: 4 * batch * heads * n^2 * d, half that with a causal mask.

    Two matrix products of n x n x d multiply-adds each (Q K^T and A V), 2 FLOPs per
    multiply-add; the softmax's O(n^2) is left out, as is usual.
    """
    for name, value in (("n", n), ("d", d), ("heads", heads), ("batch", batch)):
        require_positive_int(name, value)
    flops = 4 * batch * heads * n * n * d
    return flops // 2 if causal else flops


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
