"""Sparse attention: each query sees only some keys, and only those are computed.

`sliding_window_attention` is causal attention in which query i sees the last `window`
positions, itself included (`masking.sliding_window_mask`), as in Mistral 7B and Gemma 2
(chapter 5).  It cuts the sequence into blocks of `window` positions, so its time and
memory grow like N * window instead of N^2.

Chapter 8 adds a few global tokens to the window, the pattern of Longformer (Beltagy et
al., 2020, https://arxiv.org/abs/2004.05150: a window around each token plus "global
attention" on a few chosen tokens, which see every token and are seen by every token)
and BigBird (Zaheer et al., 2020, https://arxiv.org/abs/2007.14062, which also adds
random keys, left out here).  In a causal model, the first tokens kept global are the
"attention sinks" of StreamingLLM (Xiao et al., 2023, https://arxiv.org/abs/2309.17453).

- `window_global_mask`: the pattern as a dense boolean mask, for pictures and references;
- `window_global_attention`: the same attention computed block by block, touching only
  the blocks the window reaches plus the global rows and columns: time and memory grow
  like N * (window + globals), linear in N;
- `window_attention_flops`, `window_score_bytes`, `window_cache_bytes`: its costs.
"""

import math

import torch
import torch.nn.functional as F

from attnlib import cost
from attnlib._checks import (
    require_float_dtype,
    require_positive_int,
    require_size,
    resolve_scale,
    validate_qkv,
)
from attnlib.attention import scaled_dot_product_attention, softmax
from attnlib.masking import causal_mask, sliding_window_mask


def _self_attention_sizes(function, q, k, v, window):
    """The broadcast batch shape and N of a windowed self-attention's arguments, checked."""
    batch_shape = validate_qkv(q, k, v)
    require_positive_int("window", window)
    n = q.shape[-2]
    if k.shape[-2] != n:
        raise ValueError(f"{function} is self-attention: q and k must have the same length "
                         f"N, got q of shape {tuple(q.shape)} and k of shape {tuple(k.shape)}")
    return batch_shape, n


def sliding_window_attention(q, k, v, window, scale=None):
    """Causal sliding-window attention: query i attends to keys max(0, i - window + 1) .. i.

    q, k: (..., N, d_k), v: (..., N, d_v) -> (..., N, d_v); same as full attention with
    the band mask 0 <= i - j < window.  The N positions are cut into blocks of `window`;
    each block of queries meets its own block of keys and the one before, so the scores
    are N x 2*window instead of N x N: time and memory grow like N * window.
    """
    batch_shape, n = _self_attention_sizes("sliding_window_attention", q, k, v, window)
    if n == 0:
        return v.new_zeros(*batch_shape, 0, v.shape[-1])
    scale = resolve_scale(scale, q.shape[-1])
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


# --- chapter 8: a window plus global tokens -------------------------------------------


def _global_positions(global_tokens, n, device=None):
    """`global_tokens` (a sequence of ints or a 1-D integer tensor) as a sorted 1-D long
    tensor of distinct positions, each checked to lie in 0 .. n - 1."""
    if isinstance(global_tokens, torch.Tensor):
        if (global_tokens.dim() > 1 or global_tokens.is_floating_point()
                or global_tokens.dtype == torch.bool):
            raise TypeError(f"global_tokens must be a 1-D integer tensor or a sequence of ints, "
                            f"got a {global_tokens.dtype} tensor of shape "
                            f"{tuple(global_tokens.shape)}")
        global_tokens = global_tokens.tolist()
    if isinstance(global_tokens, (int, str)) or not hasattr(global_tokens, "__iter__"):
        raise TypeError(f"global_tokens must be a sequence of positions such as range(2) (the "
                        f"first two tokens), got {type(global_tokens).__name__}")
    positions = list(global_tokens)
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
        raise TypeError(f"global_tokens must hold ints (positions), got {positions!r}")
    outside = [p for p in positions if not 0 <= p < n]
    if outside:
        raise ValueError(f"global_tokens must be positions between 0 and n - 1 = {n - 1}, "
                         f"got {outside}")
    return torch.tensor(sorted(set(positions)), dtype=torch.long, device=device)


def window_global_mask(n, window, global_tokens=(), is_causal=False, device=None):
    """Boolean mask (n, n) of a sliding window plus global tokens: True where query i may
    attend to key j.

    mask[i, j] = abs(i - j) < window, or i or j is a global token (Longformer's pattern);
    with is_causal, only j <= i of that: the causal band 0 <= i - j < window of
    `masking.sliding_window_mask`, plus the global tokens' columns and rows up to the
    diagonal.  `global_tokens`: positions (any order, repeats ignored), () for none.
    """
    band = sliding_window_mask(n, window, device=device)
    if not is_causal:
        band = band | band.mT
    is_global = torch.zeros(n, dtype=torch.bool, device=device)
    is_global[_global_positions(global_tokens, n, device)] = True
    mask = band | is_global[:, None] | is_global[None, :]
    return mask & causal_mask(n, device=device) if is_causal else mask


def _neighbour_blocks(t, block, blocks, offsets):
    """(..., N, d) -> (..., blocks, len(offsets) * block, d): for each block of `block`
    positions, the blocks at the given offsets from it side by side (zeros beyond the ends)."""
    t = F.pad(t, (0, 0, 0, blocks * block - t.shape[-2]))
    t = F.pad(t.reshape(*t.shape[:-2], blocks, block, t.shape[-1]), (0, 0, 0, 0, 1, 1))
    return torch.cat([t[..., 1 + o:1 + o + blocks, :, :] for o in offsets], dim=-2)


def window_global_attention(q, k, v, window, global_tokens=(), is_causal=False, scale=None):
    """Attention restricted to `window_global_mask(N, window, global_tokens, is_causal)`,
    computed block by block: never an N x N table.

    q, k: (..., N, d_k), v: (..., N, d_v) -> (..., N, d_v); equal to full attention with
    that mask.  The N queries are cut into blocks of `window`; each block meets the key
    blocks the window reaches (the one before and its own, plus the one after when not
    causal; only its own when N <= window) and the global keys.  The global queries see
    every (earlier) key: their rows are computed in full, g x N.  Scores: N * (2 or 3
    window + g) + g * N entries, linear in N (`window_score_bytes`).  Every query sees
    itself, so no row is empty.
    """
    batch_shape, n = _self_attention_sizes("window_global_attention", q, k, v, window)
    glob = _global_positions(global_tokens, n, q.device)
    if n == 0:
        return v.new_zeros(*batch_shape, 0, v.shape[-1])
    scale = resolve_scale(scale, q.shape[-1])
    block = min(window, n)
    blocks = -(-n // block)
    offsets = (0,) if blocks == 1 else (-1, 0) if is_causal else (-1, 0, 1)
    queries = torch.arange(blocks * block, device=q.device).reshape(blocks, block)
    keys = torch.cat([queries + o * block for o in offsets], dim=-1)[:, None, :]
    queries = queries[:, :, None]
    distance = queries - keys  # (blocks, block, keys of the neighbour blocks)
    band = (distance >= 0) & (distance < window) if is_causal else distance.abs() < window
    is_global = torch.zeros(n, dtype=torch.bool, device=q.device)
    is_global[glob] = True
    band &= (keys >= 0) & (keys < n) & ~is_global[keys.clamp(0, n - 1)]  # globals come next
    sees_global = queries >= glob if is_causal else torch.ones_like(queries >= glob)

    q_blocks = _neighbour_blocks(q * scale, block, blocks, (0,))
    scores = torch.cat([q_blocks @ _neighbour_blocks(k, block, blocks, offsets).mT,
                        q_blocks @ k[..., None, glob, :].mT], dim=-1)
    weights = softmax(scores.masked_fill(~torch.cat([band, sees_global], dim=-1), -math.inf))
    out = (weights[..., :band.shape[-1]] @ _neighbour_blocks(v, block, blocks, offsets)
           + weights[..., band.shape[-1]:] @ v[..., None, glob, :])
    out = out.reshape(*out.shape[:-3], blocks * block, out.shape[-1])[..., :n, :]
    if len(glob) == 0:
        return out
    rows_mask = torch.arange(n, device=q.device) <= glob[:, None] if is_causal else None
    rows = scaled_dot_product_attention(q[..., glob, :], k, v, attn_mask=rows_mask, scale=scale)
    return out.index_copy(-2, glob, rows.expand(*out.shape[:-2], len(glob), out.shape[-1]))


# --- their costs -------------------------------------------------------------------------


def _check_window_sizes(n, window, n_global):
    require_positive_int("n", n)
    require_positive_int("window", window)
    require_size("n_global", n_global)
    if n_global > n:
        raise ValueError(f"n_global must be at most n = {n} (the global tokens are among the "
                         f"n tokens), got {n_global}")


def _sum_min(lo, hi, cap):
    """sum of min(cap, max(0, u)) for u = lo .. hi, in closed form (0 when hi < lo)."""
    def upto(m):  # sum of min(cap, u) for u = 1 .. m
        if m <= 0:
            return 0
        if m <= cap:
            return m * (m + 1) // 2
        return cap * (cap + 1) // 2 + (m - cap) * cap

    return upto(hi) - upto(lo - 1) if hi >= lo else 0


def visible_pairs(n, window, n_global=0, causal=False):
    """Number of (query, key) pairs that `window_global_mask(n, window, range(n_global),
    causal)` allows, in closed form: the True entries of the mask.

    The global tokens are the first n_global positions.  Causal: the global rows see
    1, 2, ..., n_global keys; every other row i sees min(i + 1, window) keys of its band
    plus the global keys to the left of the band.  Not causal: the global rows see all n
    keys; row i sees its band abs(i - j) < window, cut at both ends, plus those global keys.
    """
    _check_window_sizes(n, window, n_global)
    g, w = n_global, window
    outside_band = _sum_min(g - w + 1, n - w, g)  # global keys left of row i's band
    if causal:
        return g * (g + 1) // 2 + _sum_min(g + 1, n, w) + outside_band
    band = (n - g) + _sum_min(g, n - 1, w - 1) + _sum_min(0, n - 1 - g, w - 1)
    return g * n + band + outside_band


def _blocked_layout(n, window, causal):
    """(positions after padding, keys each query block meets) of window_global_attention."""
    block = min(window, n)
    blocks = -(-n // block)
    return blocks * block, (1 if blocks == 1 else 2 if causal else 3) * block


def window_attention_flops(n, d, window, n_global=0, heads=1, batch=1, causal=False,
                           blocked=False):
    """Forward FLOPs of window-plus-global attention: 4 * d FLOPs per visible (query, key)
    pair (`visible_pairs`), times batch * heads; the global tokens are the first n_global.

    With blocked=True, what `window_global_attention` really computes: each block of
    `window` queries meets 2 (causal) or 3 whole key blocks and the g global keys, and the
    g global rows meet all n keys: 4 d (n' (2 or 3 window + g) + g n), n rounded up to a
    whole number of blocks (n <= window: one block of n, 4 d (n (n + g) + g n)).  About
    4 n window d either way, linear in n, but the blocked count is twice the pairs when
    causal and 1.5 times when not: half of each block pair is masked.
    """
    require_positive_int("d", d)
    for name, value in (("heads", heads), ("batch", batch)):
        require_positive_int(name, value)
    if not blocked:
        return 4 * d * batch * heads * visible_pairs(n, window, n_global, causal)
    _check_window_sizes(n, window, n_global)
    padded, keys = _blocked_layout(n, window, causal)
    return 4 * d * batch * heads * (padded * (keys + n_global) + n_global * n)


def window_score_bytes(n, window, n_global=0, heads=1, batch=1, dtype=torch.float16,
                       causal=False):
    """Bytes of the scores that `window_global_attention` forms: n' x (2 or 3 window + g)
    for the blocks (n x (n + g) when n <= window) and g x n for the global rows, per head
    and sequence, where `cost.score_matrix_bytes` has n x n.  Linear in n for a fixed
    window."""
    _check_window_sizes(n, window, n_global)
    for name, value in (("heads", heads), ("batch", batch)):
        require_positive_int(name, value)
    padded, keys = _blocked_layout(n, window, causal)
    entries = padded * (keys + n_global) + n_global * n
    return batch * heads * entries * require_float_dtype(dtype).itemsize


def window_cache_bytes(n, d, window, n_global=0, heads=1, layers=1, batch=1,
                       dtype=torch.float16):
    """Bytes of the key/value cache that causal generation with a window keeps: the last
    `window` tokens plus the global ones, `cost.kv_cache_bytes` of min(n, window + g)
    tokens.  It stops growing once n passes window + g (Mistral 7B's rolling buffer,
    Jiang et al., 2023, https://arxiv.org/abs/2310.06825)."""
    _check_window_sizes(n, window, n_global)
    return cost.kv_cache_bytes(min(n, window + n_global), d, heads, layers, batch, dtype)
