"""Sparse attention: each query sees only some keys, and only those are computed.

`sliding_window_attention` is causal attention in which query i sees the last `window`
positions, itself included (`masking.sliding_window_mask`), as in Mistral 7B and Gemma 2
(chapter 5).  It cuts the sequence into blocks of `window` positions, so its time and
memory grow like N * window instead of N^2.
"""

import math

import torch
import torch.nn.functional as F

from attnlib._checks import require_positive_int, resolve_scale, validate_qkv
from attnlib.attention import softmax


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
