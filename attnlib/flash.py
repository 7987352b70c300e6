"""Chapter 6: FlashAttention from scratch: online softmax, tiling, recomputation.

The same output as `attnlib.attention.scaled_dot_product_attention`, computed one block
of keys at a time so that the N x N matrix of scores never exists in memory.  The loop is
FlashAttention-2's (Dao, 2023): query blocks outside, key/value blocks streamed inside, an
unnormalised accumulator divided by the sum once at the end, one log-sum-exp kept per row::

    for each query block Q_r:                       m = -inf, ell = 0, acc = 0
        for each key/value block K_c, V_c:          S = Q_r K_c^T * scale
            m' = max(m, rowmax S),   P~ = exp(S - m'),   c = exp(m - m')
            ell = c ell + rowsum P~,   acc = c acc + P~ V_c,   m = m'
        O_r = acc / ell,   lse_r = m + log ell

The softmax is built up in three steps, as in the chapter: `safe_softmax` (three passes
over the scores), `online_softmax` (the maximum and the normaliser in one pass, with
`online_update`), and `online_attention` (a single pass that also takes the weighted
sum of the values).  `block_step` is that single pass for a block of keys at once, and
`flash_attention` runs it over the tiles of `block_schedule`.  The backward pass keeps
only the output and the log-sum-exp `lse` of each row and recomputes the blocks.

Semantics are chapter 2's: q (..., L, d_k), k (..., S, d_k), v (..., S, d_v) with
leading dimensions that broadcast; `is_causal` lets query i see keys 0..i (top-left
alignment); a query that sees no key (only possible when S = 0) gets a zero output and
lse = -inf.

Precision is FlashAttention's (Dao, 2023, https://arxiv.org/abs/2307.08691): whatever the
inputs' dtype, the scores, the running max and sum, the accumulator, lse and the backward
pass's row sums and gradients are computed in `accumulation_dtype` (float32 for float16
and bfloat16 inputs); only the output and the gradients are returned in the inputs' dtype.
`online_softmax`, `online_attention` and `block_step` compute in the dtype they are
given, so that the chapter can run the same row with float16 and with float32 statistics.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from attnlib._checks import (
    broadcast_batch,
    require_float_dtype,
    require_positive_int,
    require_tensor,
    resolve_scale,
    validate_qkv,
)

#: Default block sizes, chosen by measurement on a 2-core CPU (float32, 8 heads, d = 64,
#: N = 4096): 512 x 256 was the fastest full attention of the sizes that stay close to
#: the best with a causal mask, where smaller query blocks skip more work
#: (`python -m attnlib.benchmark --sweep-blocks` measures them again).
BLOCK_Q = 512
BLOCK_K = 256


def _finite(m):
    """m where it is finite, 0 where m = -inf (a row that has seen no score yet).

    Subtracting it instead of m keeps exp(x - m) at exp(-inf) = 0 rather than
    exp(-inf + inf) = NaN, so a row with no visible key ends with ell = 0 and no NaN.
    """
    return torch.where(m == -math.inf, torch.zeros_like(m), m)


def _nonzero(ell):
    """ell with its zeros replaced by ones: the divisor for 0 / 0 = 0 (no key, zero output)."""
    return torch.where(ell == 0, torch.ones_like(ell), ell)


# --- the softmax in three steps ----------------------------------------------------------


def safe_softmax(x):
    """Softmax along the last dimension in three passes over x.

        m = max_j x_j,   ell = sum_j exp(x_j - m),   a_j = exp(x_j - m) / ell

    A row of only -inf gives zeros (the library's policy; `torch.softmax` gives NaN).
    """
    require_tensor("x", x)
    if x.shape[-1] == 0:
        return x.clone()
    m = x.amax(dim=-1, keepdim=True)                           # pass 1: the maximum
    ell = torch.exp(x - _finite(m)).sum(dim=-1, keepdim=True)  # pass 2: the normaliser
    return torch.exp(x - _finite(m)) / _nonzero(ell)           # pass 3: the weights


def online_update(m, ell, x):
    """Fold one more score x into the running maximum m and running sum ell.

        m' = max(m, x),   ell' = ell exp(m - m') + exp(x - m')

    Start from m = -inf, ell = 0.  After x_1..x_t, ell = sum_u exp(x_u - m) with m their max.
    """
    m_new = torch.maximum(m, x)
    shift = _finite(m_new)
    return m_new, ell * torch.exp(m - shift) + torch.exp(x - shift)


def online_softmax(x):
    """Softmax along the last dimension in two passes: the maximum and the normaliser
    together in one pass (`online_update`), then the weights.

        m_t = max(m_{t-1}, x_t),   ell_t = ell_{t-1} exp(m_{t-1} - m_t) + exp(x_t - m_t),
        a_j = exp(x_j - m_n) / ell_n
    """
    require_tensor("x", x)
    m = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype, device=x.device)
    ell = torch.zeros_like(m)
    for t in range(x.shape[-1]):                                # pass 1: max and sum
        m, ell = online_update(m, ell, x[..., t])
    m, ell = m.unsqueeze(-1), ell.unsqueeze(-1)
    return torch.exp(x - _finite(m)) / _nonzero(ell)            # pass 2: the weights


def online_attention(scores, v):
    """softmax(scores) @ v in a single pass over the keys, never storing the weights.

    scores: (..., L, S), v: (..., S, d_v)  ->  (..., L, d_v).  With c = exp(m_{t-1} - m_t):

        m_t = max(m_{t-1}, s_t),   ell_t = c ell_{t-1} + exp(s_t - m_t),
        o_t = c o_{t-1} + exp(s_t - m_t) v_t,   output o_n / ell_n   (o: unnormalised)
    """
    require_tensor("scores", scores, min_dim=2)
    require_tensor("v", v, min_dim=2)
    if scores.shape[-1] != v.shape[-2]:
        raise ValueError(f"scores has {scores.shape[-1]} keys (last dimension) but v has "
                         f"{v.shape[-2]} (second-to-last), shapes {tuple(scores.shape)} and "
                         f"{tuple(v.shape)}")
    batch_shape = broadcast_batch(("scores", scores), ("v", v))
    m = torch.full((*scores.shape[:-1], 1), -math.inf, dtype=scores.dtype, device=scores.device)
    ell = torch.zeros_like(m)
    o = torch.zeros(*batch_shape, scores.shape[-2], v.shape[-1], dtype=v.dtype, device=v.device)
    for t in range(scores.shape[-1]):                           # the only pass
        s_t, v_t = scores[..., t:t + 1], v[..., t:t + 1, :]
        m_new = torch.maximum(m, s_t)
        shift = _finite(m_new)
        rescale, p = torch.exp(m - shift), torch.exp(s_t - shift)
        ell = rescale * ell + p
        o = rescale * o + p * v_t
        m = m_new
    return o / _nonzero(ell)


# --- tiles ------------------------------------------------------------------------------


def block_step(m, ell, acc, scores, v_block):
    """Fold one block of keys into a query block's running state; return (m, ell, acc).

    m, ell: (..., bq, 1) running max and sum; acc: (..., bq, d_v) unnormalised output;
    scores: (..., bq, bk) = Q_r K_c^T * scale (-inf where masked); v_block: (..., bk, d_v).

        m' = max(m, rowmax S),  P~ = exp(S - m'),  ell' = e^(m - m') ell + rowsum P~,
        acc' = e^(m - m') acc + P~ V

    For speed it works in place: `scores` is overwritten by P~, and ell and acc are updated.
    """
    m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
    shift = _finite(m_new)
    rescale = torch.exp(m - shift)          # exp(m_old - m_new): 0 on the first block
    p = scores.sub_(shift).exp_()
    ell.mul_(rescale).add_(p.sum(dim=-1, keepdim=True))
    acc.mul_(rescale).add_(p @ v_block)
    return m_new, ell, acc


class Block(NamedTuple):
    """One tile: queries [q_start, q_end) against keys [k_start, k_end); `masked` when
    the causal mask hides part of it (a tile on the diagonal)."""

    q_start: int
    q_end: int
    k_start: int
    k_end: int
    masked: bool


def key_blocks(q_start, q_end, n_k, block_k, is_causal=False):
    """The tiles of the query block [q_start, q_end), one `Block` per key block of
    `block_k` keys out of n_k that it can see, in order; with `is_causal`, the key blocks
    after the query block's last query are left out."""
    for k_start in range(0, n_k, block_k):
        k_end = min(k_start + block_k, n_k)
        if is_causal and k_start > q_end - 1:
            return                          # this key block and all later ones are hidden
        yield Block(q_start, q_end, k_start, k_end, is_causal and k_end - 1 > q_start)


def block_schedule(n_q, n_k, block_q, block_k, is_causal=False):
    """The tiles the tiled algorithm computes, in order: query blocks outside, key blocks
    inside.

    With `is_causal`, query i sees keys 0..i, so a tile whose first key comes after its
    last query is entirely hidden and is never computed; a tile that the diagonal
    crosses is computed with a mask (`masked=True`).
    """
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        require_positive_int(name, value)
    return [block for q_start in range(0, n_q, block_q)
            for block in key_blocks(q_start, min(q_start + block_q, n_q), n_k, block_k,
                                    is_causal)]


def tile_scores(q, k, block, out=None):
    """The scores of one tile, q (B, L, d_k) already scaled, k (B, S, d_k) ->
    Q_r K_c^T (B, q_end - q_start, k_end - k_start), with -inf where the causal mask
    hides a key; written into `out` when given (a buffer reused from tile to tile)."""
    q_block, k_block = q[:, block.q_start:block.q_end], k[:, block.k_start:block.k_end]
    scores = torch.bmm(q_block, k_block.mT, out=out)
    if block.masked:
        # key k_start + c is hidden from query q_start + r when c - r > q_start - k_start
        hidden = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
        scores.masked_fill_(hidden.triu(block.q_start - block.k_start + 1), -math.inf)
    return scores


def accumulation_dtype(dtype):
    """The dtype of the running statistics for inputs of `dtype`: float32 for float16 and
    bfloat16, as in FlashAttention, which keeps them in float32 whatever the inputs'
    dtype (Dao, 2023, https://arxiv.org/abs/2307.08691); float32 or float64 unchanged."""
    return torch.promote_types(require_float_dtype(dtype), torch.float32)


def _require_batched(q, k, v):
    validate_qkv(q, k, v)
    if not q.dim() == k.dim() == v.dim() == 3 or not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"q, k and v must be 3-D with one batch size B, (B, L, d_k), "
                         f"(B, S, d_k), (B, S, d_v); got shapes {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")


def tiled_forward(q, k, v, scale, is_causal=False, block_q=BLOCK_Q, block_k=BLOCK_K):
    """The tiled forward pass, the loop of the module's docstring:
    q (B, L, d_k), k (B, S, d_k), v (B, S, d_v) -> out (B, L, d_v), lse (B, L).

    The scores, m, ell, acc and the returned out and lse are in `accumulation_dtype`
    (float32 for float16 inputs): `flash_attention` rounds out to the inputs' dtype and
    gives the backward pass the unrounded one.
    """
    _require_batched(q, k, v)
    work = accumulation_dtype(q.dtype)
    batch, n_q, n_k, d_v = q.shape[0], q.shape[1], k.shape[1], v.shape[-1]
    q = q.to(work) * scale  # once here rather than on every tile of scores
    k, v = k.to(work), v.to(work)
    out, lse = q.new_empty(batch, n_q, d_v), q.new_empty(batch, n_q)
    tile = q.new_empty(batch, min(block_q, n_q), min(block_k, n_k))  # reused by full tiles
    for q_start in range(0, n_q, block_q):
        q_end = min(q_start + block_q, n_q)
        m = q.new_full((batch, q_end - q_start, 1), -math.inf)
        ell, acc = torch.zeros_like(m), q.new_zeros(batch, q_end - q_start, d_v)
        for block in key_blocks(q_start, q_end, n_k, block_k, is_causal):
            shape = (batch, q_end - q_start, block.k_end - block.k_start)
            scores = tile_scores(q, k, block, out=tile if tile.shape == shape else None)
            m, ell, acc = block_step(m, ell, acc, scores, v[:, block.k_start:block.k_end])
        out[:, q_start:q_end] = acc / _nonzero(ell)
        lse[:, q_start:q_end] = (m + torch.log(ell)).squeeze(-1)  # -inf for a row with no key
    return out, lse


def tiled_backward(q, k, v, out, lse, grad_out, grad_lse=None, scale=None, is_causal=False,
                   block_q=BLOCK_Q, block_k=BLOCK_K):
    """Gradients of the tiled forward by recomputation, from q (B, L, d_k), k (B, S, d_k),
    v (B, S, d_v), the output out (B, L, d_v), lse (B, L) and their gradients grad_out
    (B, L, d_v) and grad_lse (B, L) (None: zero) -> (grad_q, grad_k, grad_v).

    For each tile, the weights A = exp(S - lse) again, then

        dV += A^T dO,   dA = dO V^T,   dS = A * (dA - delta),   dQ += dS K scale,
        dK += dS^T Q scale,   with delta = rowsum(dO * O) - dlse  (dlse: lse's gradient).

    delta, A, dS and the gradients are in `accumulation_dtype` (float32 for float16
    inputs), returned in the inputs' dtype.  delta is only as exact as out: give it the
    unrounded float32 output (an output rounded to float16 was seen to make dk seven
    times less accurate than PyTorch's own float16 attention).  Any forward that returns
    out and lse can use it: `flash_attention` and `attnlib.triton_attention` both do.
    """
    _require_batched(q, k, v)
    dtype, work = q.dtype, accumulation_dtype(q.dtype)
    scale = resolve_scale(scale, q.shape[-1])
    if out.shape != grad_out.shape or out.shape != (*q.shape[:2], v.shape[-1]) or \
            lse.shape != q.shape[:2]:
        raise ValueError(f"out and grad_out must have shape (B, L, d_v) = "
                         f"{(*q.shape[:2], v.shape[-1])} and lse shape (B, L) = "
                         f"{tuple(q.shape[:2])}, got {tuple(out.shape)}, "
                         f"{tuple(grad_out.shape)} and {tuple(lse.shape)}")
    q, k, v, out, grad_out = (t.to(work).contiguous() for t in (q, k, v, out, grad_out))
    q_scaled = q * scale
    grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    delta = (grad_out * out).sum(dim=-1)
    if grad_lse is not None:
        delta = delta - grad_lse.to(work)
    delta = delta.unsqueeze(-1)
    lse = lse.to(work).masked_fill(lse == -math.inf, math.inf).unsqueeze(-1)  # no key: A = 0
    for block in block_schedule(q.shape[1], k.shape[1], block_q, block_k, is_causal):
        rows = slice(block.q_start, block.q_end)
        keys = slice(block.k_start, block.k_end)
        weights = tile_scores(q_scaled, k, block).sub_(lse[:, rows]).exp_()
        grad_v[:, keys] += weights.mT @ grad_out[:, rows]
        grad_weights = grad_out[:, rows] @ v[:, keys].mT
        grad_s = weights.mul_(grad_weights.sub_(delta[:, rows]))
        grad_q[:, rows] += grad_s @ k[:, keys]
        grad_k[:, keys] += grad_s.mT @ q_scaled[:, rows]
    return grad_q.mul_(scale).to(dtype), grad_k.to(dtype), grad_v.to(dtype)


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd for the tiled forward: saves q, k, v, the output and lse (nothing of size
    L x S) and recomputes the tiles in the backward pass.  Inputs are 3-D (B, L, d).  The
    output is returned in the inputs' dtype and saved unrounded, for an exact delta."""

    @staticmethod
    def forward(ctx, q, k, v, scale, is_causal, block_q, block_k):
        out, lse = tiled_forward(q, k, v, scale, is_causal, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (scale, is_causal, block_q, block_k)
        return out.to(q.dtype), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        grads = tiled_backward(q, k, v, out, lse, grad_out, grad_lse, *ctx.settings)
        return (*grads, None, None, None, None)


def flash_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, *, block_q=BLOCK_Q,
                    block_k=BLOCK_K, return_lse=False):
    """softmax(Q K^T * scale) V computed tile by tile, with memory linear in L and S.

    q: (..., L, d_k), k: (..., S, d_k), v: (..., S, d_v)  ->  (..., L, d_v), equal to
    `scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)`.  With
    `return_lse=True`, also returns lse (..., L) = log sum_j exp(S_ij), the log of each
    row's softmax normaliser (-inf for a row with no visible key), in
    `accumulation_dtype` (float32 for float16 inputs, as FlashAttention returns it).
    Differentiable (the backward recomputes the tiles).  The signature is PyTorch's, but
    of the masks only `is_causal` is supported: `attn_mask` must be None.
    """
    if attn_mask is not None:
        raise ValueError(
            "attn_mask must be None: flash_attention supports is_causal=True but no explicit "
            "mask; use attnlib.attention.scaled_dot_product_attention for other masks"
        )
    batch_shape = validate_qkv(q, k, v)
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        require_positive_int(name, value)
    (n_q, d_k), d_v = q.shape[-2:], v.shape[-1]
    batch = math.prod(batch_shape)
    q3, k3, v3 = (t.expand(*batch_shape, *t.shape[-2:]).reshape(batch, *t.shape[-2:])
                  for t in (q, k, v))
    scale = resolve_scale(scale, d_k)
    out, lse = FlashAttentionFunction.apply(q3, k3, v3, scale, bool(is_causal), block_q, block_k)
    out, lse = out.reshape(*batch_shape, n_q, d_v), lse.reshape(*batch_shape, n_q)
    return (out, lse) if return_lse else out


# --- for the chapter: the algorithm step by step, and its traffic to slow memory ---------


@dataclass(frozen=True)
class Step:
    """The state of the tiled forward after one tile, for one head of L queries.

    block: the tile just processed; m, ell: (L,) running max and sum of every query row
    (-inf and 0 for rows not reached yet); out: (L, d_v) the output so far, acc / ell
    (exact for the rows whose query block is finished, 0 for rows not reached yet).
    """

    block: Block
    m: torch.Tensor
    ell: torch.Tensor
    out: torch.Tensor


def flash_steps(q, k, v, is_causal=False, scale=None, block_q=4, block_k=4):
    """Run the tiled forward on one head, q (L, d_k), k (S, d_k), v (S, d_v), and yield a
    `Step` after every tile of `block_schedule`, with the same `block_step` as
    `flash_attention` (and its `accumulation_dtype`).  The last step's `out` is the
    attention output."""
    validate_qkv(q, k, v)
    if q.dim() != 2:
        raise ValueError(f"flash_steps follows one head: q, k, v must be 2-D, got q of shape "
                         f"{tuple(q.shape)}")
    scale = resolve_scale(scale, q.shape[-1])
    work = accumulation_dtype(q.dtype)
    q, k, v = (q.to(work) * scale).unsqueeze(0), k.to(work).unsqueeze(0), v.to(work).unsqueeze(0)
    m = q.new_full((1, q.shape[1], 1), -math.inf)
    ell, acc = torch.zeros_like(m), q.new_zeros(1, q.shape[1], v.shape[-1])
    for block in block_schedule(q.shape[1], k.shape[1], block_q, block_k, is_causal):
        rows = slice(block.q_start, block.q_end)
        m[:, rows], ell[:, rows], acc[:, rows] = block_step(
            m[:, rows], ell[:, rows], acc[:, rows], tile_scores(q, k, block),
            v[:, block.k_start:block.k_end])
        yield Step(block, m[0, :, 0].clone(), ell[0, :, 0].clone(),
                   (acc / _nonzero(ell))[0].clone())


def naive_steps(n, d):
    """The three steps of naive attention for one head of n queries and n keys of width d,
    each reading its inputs from slow memory and writing its result back to it, as
    {step: (FLOPs, elements moved)}::

        S = Q K^T / sqrt(d):  2 n^2 d FLOPs;               read Q, K, write S:  2 n d + n^2
        A = softmax(S):       5 n^2 FLOPs (max, subtract,  read S, write A:     2 n^2
                              exp, sum, divide);
        O = A V:              2 n^2 d FLOPs;               read A, V, write O:  n^2 + 2 n d
    """
    for name, value in (("n", n), ("d", d)):
        require_positive_int(name, value)
    return {"S = Q K^T / sqrt(d)": (2 * n * n * d, 2 * n * d + n * n),
            "A = softmax(S)": (5 * n * n, 2 * n * n),
            "O = A V": (2 * n * n * d, n * n + 2 * n * d)}


def naive_io(n, d):
    """Elements that naive attention moves between slow and fast memory for one head: the
    sum over `naive_steps`, 4 n d + 4 n^2."""
    return sum(moved for _, moved in naive_steps(n, d).values())


def tiled_io(n, d, block_q):
    """Elements that the tiled forward moves between slow and fast memory for one head of
    n queries and n keys of width d, run as a fused GPU kernel runs it::

        2 n d + 2 n d ceil(n / block_q)

    Each query block is read once and its output written once (2 n d in all), and every
    key and value is read once per query block.  This assumes one fused kernel per query
    block, which keeps the query block, its running max and sum and its accumulator in
    fast memory for the whole loop over key blocks; tiles of scores and weights that
    never leave fast memory (SRAM or registers); no causal mask; and it leaves out the
    traffic of vectors of length n (lse, m, ell).  With block_q about M / d for a fast
    memory of M elements it is Theta(n^2 d^2 / M), Theorem 2 of Dao et al. (2022),
    against Theta(n d + n^2) for `naive_io`.
    """
    for name, value in (("n", n), ("d", d), ("block_q", block_q)):
        require_positive_int(name, value)
    return 2 * n * d + 2 * n * d * math.ceil(n / block_q)


def largest_block_q(fast_memory, d, block_k):
    """The largest query block whose working set fits in `fast_memory` elements, or 0:

        block_q (2 d + 2 + block_k) + 2 block_k d <= fast_memory

    (the query block and its accumulator, its running max and sum, one tile of scores,
    and one key block and one value block).
    """
    for name, value in (("fast_memory", fast_memory), ("d", d), ("block_k", block_k)):
        require_positive_int(name, value)
    return max(0, (fast_memory - 2 * block_k * d) // (2 * d + 2 + block_k))
