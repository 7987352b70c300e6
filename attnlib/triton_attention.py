"""Chapter 7: the course's own GPU kernel, FlashAttention-2's forward pass in Triton.

`attention_forward_kernel` is chapter 6's `tiled_forward` written for a GPU with Triton
(Tillet, Kung and Cox, 2019, https://www.eecs.harvard.edu/~htk/publication/2019-mapl-tillet-kung-cox.pdf),
with the same names: one program per query block of one (batch, head), which keeps its
query block `q`, running max `m`, sum `ell` and accumulator `acc` in registers while it
streams the key blocks through `fold_key_blocks`, chapter 6's `block_step`.  As in
FlashAttention-2 (Dao, 2023, https://arxiv.org/abs/2307.08691):

- `tl.dot` multiplies float16 or bfloat16 tiles with float32 accumulation, and m, ell,
  acc and lse are float32 whatever the inputs' dtype;
- the scores are kept in base 2: log2(e) is folded into the scale, so that the
  exponentials are `exp2` (one instruction on a GPU), and lse is converted back;
- key blocks that need no mask (all keys exist and every query of the block sees them)
  run without one; only the last, ragged key block and, with `is_causal`, the blocks
  that the diagonal crosses are masked; blocks above the diagonal are never loaded.

Gradients: `triton_attention` is differentiable; its backward pass is chapter 6's
recomputing `attnlib.flash.tiled_backward`, fed with the kernel's output and lse.

Where it runs: on a CUDA GPU, compiled; and through Triton's interpreter, which runs
every program of the kernel with NumPy on the CPU: slow, but enough for the tests and for
a learner without a GPU.  The kernels are interpreted where there is no CUDA GPU, unless
TRITON_INTERPRET says otherwise when this module is imported (`INTERPRETED`), whatever
imported Triton before.  The interpreter gets bfloat16 `tl.dot` wrong (seen in Triton 3.6 and
3.7), so bfloat16 runs on a GPU only.

Triton is an optional dependency (`pip install "attnlib[triton]"`; Colab's CUDA PyTorch
ships it): this module imports without it, and `triton_attention` then says what to
install.  `python -m attnlib.triton_attention` checks the kernel against PyTorch's
`scaled_dot_product_attention` and, on a GPU, times both.
"""

from __future__ import annotations  # Triton reads the "tl.constexpr" annotations as text

import functools
import math
import os
import sys
from typing import NamedTuple

import numpy as np
import torch

from attnlib import flash
from attnlib._checks import (
    require_float_dtype,
    require_positive_int,
    resolve_scale,
    validate_qkv,
)

try:
    import triton
    import triton.language as tl
except ImportError:  # attnlib works without Triton; triton_attention then says what to install
    triton = tl = None

LOG2E = math.log2(math.e)
MAX_HEAD_DIM = 128
T4_SHARED_MEMORY = 64 * 1024  #: bytes of shared memory per block on a T4, Colab's GPU

#: Whether the kernels run in Triton's interpreter, decided when this module is imported:
#: as TRITON_INTERPRET says (1 or 0) where it is set, else where there is no CUDA GPU.
INTERPRETED = (not torch.cuda.is_available() if "TRITON_INTERPRET" not in os.environ else
               os.environ["TRITON_INTERPRET"].strip().lower() in ("1", "true", "on", "yes"))


def jit(fn):
    """`triton.jit`, in the interpreter when `INTERPRETED` (and fn itself without Triton).

    Triton reads TRITON_INTERPRET when it decorates a function, so this sets it for that
    moment only: PyTorch may have imported Triton for the GPU before, and the variable
    would change every Triton function decorated later.
    """
    if triton is None:
        return fn
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if INTERPRETED else "0"
    try:
        return triton.jit(fn)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


# --- the kernel -------------------------------------------------------------------------
# Row maxima and sums reduce with Triton's own combining functions rather than calling
# tl.max and tl.sum: those are Triton functions, decorated when Triton was imported, and
# if that was for the GPU (PyTorch imports Triton, for instance) the interpreter cannot
# call them.  The interpreter recognises these combining functions and uses NumPy.


@jit
def _row_max(x):
    """tl.max(x, 1)"""
    return tl.reduce(x, 1, tl.standard._elementwise_max)


@jit
def _row_sum(x):
    """tl.sum(x, 1)"""
    return tl.reduce(x, 1, tl.standard._sum_combine)


@jit
def fold_key_blocks(acc, m, ell, q, kT_ptrs, v_ptrs, stride_kn, stride_vn, queries, k_lo, k_hi,
                     n_k, qk_scale, BLOCK_K: tl.constexpr, MASKED: tl.constexpr,
                     IS_CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """Chapter 6's `block_step` for each key block [k_start, k_start + BLOCK_K) with k_lo <=
    k_start < k_hi, in base 2 (m and the scores are multiplied by log2(e)):

        m' = max(m, rowmax S),  P~ = 2^(S - m'),  ell' = 2^(m - m') ell + rowsum P~,
        acc' = 2^(m - m') acc + P~ V

    MASKED: mask keys past n_k and, with IS_CAUSAL, keys after each query.
    """
    for k_start in range(k_lo, k_hi, BLOCK_K):
        keys = k_start + tl.arange(0, BLOCK_K)
        if MASKED:
            kT = tl.load(kT_ptrs + k_start * stride_kn, mask=keys[None, :] < n_k, other=0.0)
            v = tl.load(v_ptrs + k_start * stride_vn, mask=keys[:, None] < n_k, other=0.0)
        else:
            kT = tl.load(kT_ptrs + k_start * stride_kn)
            v = tl.load(v_ptrs + k_start * stride_vn)
        scores = tl.dot(q, kT, input_precision=PRECISION) * qk_scale  # float32, base 2
        if MASKED:
            visible = keys[None, :] < n_k
            if IS_CAUSAL:
                visible = visible & (keys[None, :] <= queries[:, None])
            scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m, _row_max(scores))
        rescale = tl.exp2(m - m_new)  # 0 on the first block, where m = -inf
        p = tl.exp2(scores - m_new[:, None])
        ell = ell * rescale + _row_sum(p)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    return acc, m, ell


@jit
def attention_forward_kernel(Q, K, V, Out, Lse, stride_qb, stride_qh, stride_qn, stride_kb,
                             stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, heads, n_q,
                             n_k, qk_scale, IS_CAUSAL: tl.constexpr, BLOCK_Q: tl.constexpr,
                             BLOCK_K: tl.constexpr, D_K: tl.constexpr, D_V: tl.constexpr,
                             PRECISION: tl.constexpr):
    """One program: the query block [q_start, q_start + BLOCK_Q) of one (batch, head).

    Q (B, H, n_q, D_K), K (B, H, n_k, D_K), V (B, H, n_k, D_V), each with unit stride in
    its last dimension; writes Out (B, H, n_q, D_V), contiguous, and Lse (B, H, n_q),
    float32.  qk_scale = scale * log2(e).  Grid: (cdiv(n_q, BLOCK_Q), B * H).
    """
    q_start = tl.program_id(0) * BLOCK_Q
    batch = (tl.program_id(1) // heads).to(tl.int64)  # 64-bit offsets for large tensors
    head = (tl.program_id(1) % heads).to(tl.int64)
    queries = q_start + tl.arange(0, BLOCK_Q)
    keys = tl.arange(0, BLOCK_K)
    dk, dv = tl.arange(0, D_K), tl.arange(0, D_V)
    q_ptrs = Q + batch * stride_qb + head * stride_qh + queries[:, None] * stride_qn + dk[None, :]
    q = tl.load(q_ptrs, mask=queries[:, None] < n_q, other=0.0)
    kT_ptrs = K + batch * stride_kb + head * stride_kh + keys[None, :] * stride_kn + dk[:, None]
    v_ptrs = V + batch * stride_vb + head * stride_vh + keys[:, None] * stride_vn + dv[None, :]

    m = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    ell = tl.full([BLOCK_Q], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_Q, D_V], 0.0, dtype=tl.float32)
    # Key blocks [0, k_full) need no mask: their keys exist and every query here sees
    # them.  Blocks [k_full, k_stop) are masked; with is_causal, keys from k_stop on
    # come after the block's last query and are skipped.
    if IS_CAUSAL:
        k_stop = tl.minimum(n_k, q_start + BLOCK_Q)
        k_full = tl.minimum(n_k, q_start + 1) // BLOCK_K * BLOCK_K
    else:
        k_stop = n_k
        k_full = n_k // BLOCK_K * BLOCK_K
    acc, m, ell = fold_key_blocks(acc, m, ell, q, kT_ptrs, v_ptrs, stride_kn, stride_vn,
                                   queries, 0, k_full, n_k, qk_scale, BLOCK_K, False,
                                   IS_CAUSAL, PRECISION)
    acc, m, ell = fold_key_blocks(acc, m, ell, q, kT_ptrs, v_ptrs, stride_kn, stride_vn,
                                   queries, k_full, k_stop, n_k, qk_scale, BLOCK_K, True,
                                   IS_CAUSAL, PRECISION)

    rows = tl.program_id(1).to(tl.int64) * n_q + queries  # this (batch, head)'s rows
    out = acc / ell[:, None]
    tl.store(Out + rows[:, None] * D_V + dv[None, :], out.to(Out.dtype.element_ty),
             mask=queries[:, None] < n_q)
    lse = (m + tl.log2(ell)) * 0.6931471805599453  # times log(2): back from base 2 to base e
    tl.store(Lse + rows, lse, mask=queries < n_q)


# --- launching it -----------------------------------------------------------------------


class KernelConfig(NamedTuple):
    """Block sizes and launch settings of `attention_forward_kernel`."""

    block_q: int  #: queries per program (a power of two, >= 16)
    block_k: int  #: keys per step of the loop (a power of two, >= 16)
    num_warps: int  #: warps of 32 threads per program
    num_stages: int  #: key/value blocks in flight (software pipelining)


def default_config(d_k, d_v, dtype, shared_memory=T4_SHARED_MEMORY):
    """The launch settings for head dims d_k, d_v and inputs of `dtype` on a GPU with
    `shared_memory` bytes of shared memory per block (default: a T4's 64 KiB, the least
    of the GPUs the course expects; an A100 has 164 KiB, an H100 or H200 227 KiB).

    FlashAttention-2 chooses blocks of 64 or 128 queries and keys by head dim and shared
    memory (Dao, 2023, https://arxiv.org/abs/2307.08691, section 3.3); so does this, from
    the first of (128, 64), (64, 64), (64, 32) (float32, which has no float16 tensor
    cores and twice the bytes: (64, 32), (32, 32)) whose shared memory fits: the query
    block plus `num_stages` key and value blocks in flight (3 where they fit, else 2).
    num_warps is 4 up to d_v = 64 and 8 above, so that the float32 accumulator
    (block_q x d_v) stays in registers.  In the interpreter, block sizes only set how
    much NumPy does per step.
    """
    blocks = [(64, 32), (32, 32)] if dtype == torch.float32 else [(128, 64), (64, 64), (64, 32)]
    num_warps = 4 if d_v <= 64 else 8
    for block_q, block_k in blocks:
        for num_stages in (3, 2):
            if shared_memory_bytes(block_q, block_k, num_stages, d_k, d_v, dtype) \
                    <= shared_memory:
                return KernelConfig(block_q, block_k, num_warps, num_stages)
    return KernelConfig(*blocks[-1], num_warps, 1)


def shared_memory_bytes(block_q, block_k, num_stages, d_k, d_v, dtype):
    """Shared memory that one program of the kernel needs, the estimate `default_config`
    uses: the query block and `num_stages` key and value blocks in flight,

        bytes per element * (block_q d_k + num_stages block_k (d_k + d_v))

    (Triton also keeps the float32 accumulator and the running m and ell, in registers.)
    """
    for name, value in (("block_q", block_q), ("block_k", block_k),
                        ("num_stages", num_stages), ("d_k", d_k), ("d_v", d_v)):
        require_positive_int(name, value)
    size = torch.empty((), dtype=require_float_dtype(dtype)).element_size()
    return size * (block_q * d_k + num_stages * block_k * (d_k + d_v))


def _shared_memory(device):
    """Bytes of shared memory a block may use on `device` (a CUDA GPU), or the default."""
    if device.type != "cuda":
        return T4_SHARED_MEMORY
    properties = torch.cuda.get_device_properties(device)
    return getattr(properties, "shared_memory_per_block_optin", T4_SHARED_MEMORY)


def _block_dim(d):
    """The head dim the kernel works with: d rounded up to a power of two >= 16, what
    `tl.arange` and `tl.dot` need."""
    return max(16, 1 << (d - 1).bit_length())


def _padded_head_dim(t):
    """t with its last dimension padded with zeros to `_block_dim` and unit stride there.
    Zero columns change neither Q K^T nor the first d_v columns of the output."""
    d = t.shape[-1]
    if _block_dim(d) != d:
        return torch.nn.functional.pad(t, (0, _block_dim(d) - d))
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch(q, k, v, scale, is_causal, config, out_dtype):
    """q (B, H, L, d_k), k (B, H, S, d_k), v (B, H, S, d_v) -> out (B, H, L, d_v) in
    `out_dtype`, lse (B, H, L) in float32, from one launch of the kernel."""
    batch, heads, n_q, n_k, d_v = *q.shape[:3], k.shape[2], v.shape[-1]
    lse = torch.full((batch, heads, n_q), -math.inf, dtype=torch.float32, device=q.device)
    if n_k == 0 or lse.numel() == 0:  # no key: zero output, lse = -inf, as flash_attention
        return q.new_zeros(batch, heads, n_q, d_v, dtype=out_dtype), lse
    q, k, v = (_padded_head_dim(t) for t in (q, k, v))
    out = q.new_empty(batch, heads, n_q, v.shape[-1], dtype=out_dtype)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # full float32 products
    grid = (triton.cdiv(n_q, config.block_q), batch * heads)
    attention_forward_kernel[grid](
        q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], heads, n_q, n_k,
        scale * LOG2E, IS_CAUSAL=is_causal, BLOCK_Q=config.block_q, BLOCK_K=config.block_k,
        D_K=q.shape[-1], D_V=v.shape[-1], PRECISION=precision, num_warps=config.num_warps,
        num_stages=config.num_stages)
    return out[..., :d_v], lse


class TritonAttentionFunction(torch.autograd.Function):
    """Autograd for the kernel: the forward launches it, the backward is chapter 6's
    `flash.tiled_backward` on the saved inputs, output and lse.  Inputs are 4-D
    (B, H, N, d).  Where gradients are wanted, the kernel writes its output in float32,
    returned rounded and saved unrounded: the backward's delta = rowsum(dO * O) is then
    exact, as in `flash.flash_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, scale, is_causal, config):
        training = any(ctx.needs_input_grad[:3])
        out, lse = _launch(q, k, v, scale, is_causal, config,
                           torch.float32 if training else q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (scale, is_causal)
        return out.to(q.dtype), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        inputs = ctx.saved_tensors[:3]
        batch = inputs[0].shape[0] * inputs[0].shape[1]
        flat = [t.reshape(batch, *t.shape[2:]) for t in (*ctx.saved_tensors, grad_out, grad_lse)]
        grads = flash.tiled_backward(*flat, *ctx.settings)
        return (*(g.reshape(t.shape) for g, t in zip(grads, inputs, strict=True)), None, None,
                None)


def _as_4d(t, batch_shape):
    """t (..., N, d) broadcast to (*batch_shape, N, d) and seen as (B, H, N, d); a view
    (broadcast dimensions get stride 0) unless more than two batch dimensions merge."""
    lead = (math.prod(batch_shape[:-1]), batch_shape[-1]) if batch_shape else (1, 1)
    return t.expand(*batch_shape, *t.shape[-2:]).reshape(*lead, *t.shape[-2:])


def _version(module):
    return tuple(int(part) for part in module.__version__.split(".")[:2])


def _require_runnable(q, k, v):
    """Raise, saying what to do, unless Triton can run the kernel on q, k, v."""
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and "
                         f"{v.device}")
    if triton is None:
        raise ImportError("triton_attention needs Triton: pip install triton (or pip install "
                          "'attnlib[triton]'); Colab's CUDA PyTorch already has it")
    if q.device.type not in ("cuda", "cpu") or (q.device.type == "cpu" and not INTERPRETED):
        raise ValueError(
            f"q, k and v are on {q.device}, where this Triton (compiled for CUDA) cannot run: "
            f"move them to a CUDA GPU, or run Triton's interpreter on the CPU by setting "
            f"TRITON_INTERPRET=1 before importing attnlib.triton_attention")
    if INTERPRETED and _version(triton) < (3, 7) and _version(np) >= (2, 4):
        raise RuntimeError(f"Triton {triton.__version__}'s interpreter fails with NumPy "
                           f"{np.__version__} (it turns 1-element arrays into ints, which "
                           f"NumPy 2.4 refuses): install triton>=3.7 or numpy<2.4")
    if INTERPRETED and q.dtype == torch.bfloat16:
        raise TypeError("q, k and v are bfloat16, which runs on a CUDA GPU only: Triton's "
                        "interpreter computes bfloat16 tl.dot wrongly; use float16 or float32")


def _resolve_config(q, d_k, d_v, **chosen):
    """`default_config` for q's dtype and device, with the settings given (not None)."""
    config = default_config(_block_dim(d_k), _block_dim(d_v), q.dtype, _shared_memory(q.device))
    config = config._replace(**{name: value for name, value in chosen.items() if value is not None})
    for name, value in config._asdict().items():
        require_positive_int(name, value)
        if name != "num_stages" and value & (value - 1):
            raise ValueError(f"{name} must be a power of two, got {value}")
    if min(config.block_q, config.block_k) < 16:
        raise ValueError(f"block_q and block_k must be >= 16 (tl.dot's smallest tile), got "
                         f"{config.block_q} and {config.block_k}")
    return config


def triton_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, *, return_lse=False,
                     block_q=None, block_k=None, num_warps=None, num_stages=None):
    """softmax(Q K^T * scale) V by the course's Triton kernel, `attention_forward_kernel`.

    q: (..., L, d_k), k: (..., S, d_k), v: (..., S, d_v) -> (..., L, d_v), equal to
    `torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal,
    scale=scale)`: leading dimensions broadcast (a k, v shared by all heads is not copied),
    L != S, `is_causal` aligned top-left (query i sees keys 0..i).  float16, bfloat16 (GPU
    only) or float32 inputs, d_k and d_v up to 128, float32 accumulation; with
    `return_lse=True`, also lse (..., L), float32, as `attnlib.flash.flash_attention`
    returns it.  Differentiable (the backward is `attnlib.flash.tiled_backward`).

    Of the masks only `is_causal` is supported: `attn_mask` must be None.  block_q,
    block_k, num_warps, num_stages override `default_config`.  Runs on a CUDA GPU, or on
    the CPU in Triton's interpreter (see the module's docstring).
    """
    if attn_mask is not None:
        raise ValueError("attn_mask must be None: triton_attention supports is_causal=True but "
                         "no explicit mask; use attnlib.attention.scaled_dot_product_attention")
    batch_shape = validate_qkv(q, k, v)
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"q, k and v must be float16, bfloat16 or float32, got {q.dtype}")
    (n_q, d_k), d_v = q.shape[-2:], v.shape[-1]
    if not 1 <= d_k <= MAX_HEAD_DIM or not 1 <= d_v <= MAX_HEAD_DIM:
        raise ValueError(f"head dims d_k and d_v must be between 1 and {MAX_HEAD_DIM}, got "
                         f"d_k = {d_k}, d_v = {d_v}; attnlib.flash.flash_attention has no limit")
    _require_runnable(q, k, v)
    config = _resolve_config(q, d_k, d_v, block_q=block_q, block_k=block_k,
                             num_warps=num_warps, num_stages=num_stages)
    q4, k4, v4 = (_as_4d(t, batch_shape) for t in (q, k, v))
    if q4.shape[0] * q4.shape[1] > 65535:
        raise ValueError(f"the batch and head dimensions {tuple(batch_shape)} hold "
                         f"{q4.shape[0] * q4.shape[1]} heads in all, more than the 65535 "
                         f"programs a CUDA grid's second axis can launch")
    out, lse = TritonAttentionFunction.apply(q4, k4, v4, resolve_scale(scale, d_k),
                                             bool(is_causal), config)
    out, lse = out.reshape(*batch_shape, n_q, d_v), lse.reshape(*batch_shape, n_q)
    return (out, lse) if return_lse else out


# --- a check to run on a GPU: python -m attnlib.triton_attention ------------------------


def check_against_pytorch(device, dtypes=(torch.float16, torch.bfloat16, torch.float32)):
    """Largest difference between `triton_attention` and PyTorch's attention on a few
    shapes (ragged blocks, L != S, causal, d from 16 to 128), for each dtype:
    {dtype name: (max abs difference, tolerance)}.  The reference is
    `F.scaled_dot_product_attention` in float32 on the same (rounded) inputs."""
    tolerances = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}
    cases = [(1, 2, 300, 300, 64, True), (2, 3, 77, 200, 16, False), (1, 4, 513, 129, 128, True),
             (2, 2, 256, 256, 128, False), (1, 1, 40, 40, 96, True)]
    results = {}
    for dtype in dtypes:
        worst = 0.0
        for batch, heads, n_q, n_k, d, is_causal in cases:
            generator = torch.Generator().manual_seed(n_q + n_k + d)
            q, k, v = (torch.randn(batch, heads, n, d, generator=generator).to(device, dtype)
                       for n in (n_q, n_k, n_k))
            expected = torch.nn.functional.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), is_causal=is_causal)
            got = triton_attention(q, k, v, is_causal=is_causal).float()
            worst = max(worst, (got - expected).abs().max().item())
        results[str(dtype).removeprefix("torch.")] = (worst, tolerances[dtype])
    return results


def time_against_flash(ns=(1024, 4096, 8192, 16384), ds=(64, 128), causal=(False, True),
                       tokens=65536, dtype=torch.float16, min_run_time=0.2, device="cuda"):
    """Forward TFLOP/s of `triton_attention` and of PyTorch's FlashAttention backend,
    float16, heads = tokens / N: a list of dicts, one per (N, d, causal), with the ratio
    triton / flash.  FLOPs: 4 B h N^2 d, half of it with a causal mask.  Meant for a GPU
    (on the CPU it times the interpreter)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnlib import measure

    def flash(q, k, v, is_causal):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    rows = []
    for n in ns:
        for d in ds:
            q, k, v = measure.attention_inputs(n, d, heads=max(1, tokens // n), dtype=dtype,
                                               device=device)
            for is_causal in causal:
                flops = 4 * q.shape[0] * q.shape[1] * n * n * d / (2 if is_causal else 1)
                row = {"n": n, "d": d, "heads": q.shape[1], "causal": is_causal}
                for name, fn in (("triton", triton_attention), ("flash", flash)):
                    fn = functools.partial(fn, is_causal=is_causal)
                    fn(q, k, v)  # compiles the kernel on its first call
                    timing = measure.time_call(fn, q, k, v, min_run_time=min_run_time)
                    row[f"{name}_tflops"] = flops / timing.median / 1e12
                    row[f"{name}_spread"] = timing.spread
                row["ratio"] = row["triton_tflops"] / row["flash_tflops"]
                rows.append(row)
    return rows


def main(argv=None):
    """Check the kernel against PyTorch, then (on a GPU) time it against FlashAttention."""
    import argparse
    import json
    import platform

    parser = argparse.ArgumentParser(prog="python -m attnlib.triton_attention",
                                     description=main.__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    parser.add_argument("--d", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _require_runnable(torch.empty(0, device=device), torch.empty(0, device=device),
                      torch.empty(0, device=device))
    record = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
              "torch": torch.__version__, "triton": triton.__version__,
              "python": platform.python_version(),
              "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    dtypes = (torch.float16, torch.bfloat16, torch.float32) if device == "cuda" else \
        (torch.float16, torch.float32)
    record["check"] = check_against_pytorch(device, dtypes)
    print(f"{record['device']}, torch {record['torch']}, triton {record['triton']}")
    for name, (error, tolerance) in record["check"].items():
        verdict = "ok" if error <= tolerance else "FAILED"
        print(f"  {name:9} max |triton - PyTorch| = {error:.2e} (tolerance {tolerance:.0e}) "
              f"{verdict}")
    if device == "cuda":
        record["times"] = time_against_flash(args.n, args.d)
        print("      N    d  causal  triton TFLOP/s  flash TFLOP/s  triton/flash")
        for row in record["times"]:
            print(f"  {row['n']:5} {row['d']:4}  {row['causal']!s:6} {row['triton_tflops']:14.1f}"
                  f" {row['flash_tflops']:14.1f} {row['ratio']:13.2f}")
    else:
        print("  no CUDA GPU: the speed comparison needs one")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=1)
    return 0 if all(error <= tol for error, tol in record["check"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
