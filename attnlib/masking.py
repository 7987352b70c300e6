"""Chapter 3: masks say which keys each query may see.

A mask is a boolean table, True where a query MAY attend, as in PyTorch's
`scaled_dot_product_attention`: rows are queries, columns are keys, and any leading
(batch, heads) dimensions broadcast.  Before the softmax it becomes an additive mask,
0 where allowed and -inf where not, so a forbidden key gets weight exp(-inf) = 0:

    A = softmax(Q K^T / sqrt(d_k) + M),   M[i, j] = 0 if mask[i, j] else -inf

Two causal masks, because two alignments exist when there are fewer queries than keys:

- `causal_mask(n_q, n_k)`: query i sees keys 0..i, counted from the FIRST key
  ("top-left"); exactly what `is_causal=True` does in PyTorch and in attnlib.
- `kv_cache_causal_mask(n_q, n_k)`: the queries are the LAST n_q of the n_k positions,
  so query i sees keys 0..(n_k - n_q + i) ("bottom-right").  That is what decoding with a
  key/value cache needs: the new tokens come after the cached ones.

Both are the familiar lower triangle when n_q == n_k.

Policy for a query that sees no key (a row of the mask that is all False): its weights
and its output are zero, never NaN; `attnlib.attention` documents it and every attention
function of the library follows it.  Sizes may be 0 (an empty sequence gives an empty
mask).
"""

import math

import torch

from attnlib._checks import require_positive_int, require_size


def _check_sizes(n_q, n_k):
    require_size("n_q", n_q)
    n_k = n_q if n_k is None else n_k
    require_size("n_k", n_k)
    return n_k


def causal_mask(n_q, n_k=None, device=None):
    """Top-left causal mask (n_q, n_k): query i may attend to keys 0..i.

    mask[i, j] = (j <= i).  The same as `is_causal=True` in PyTorch, also when
    n_q != n_k.  For new queries that FOLLOW a cache of keys use `kv_cache_causal_mask`.
    """
    n_k = _check_sizes(n_q, n_k)
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()


def kv_cache_causal_mask(n_q, n_k, device=None):
    """Bottom-right causal mask (n_q, n_k) for n_q new queries at the END of n_k positions.

    mask[i, j] = (j <= n_k - n_q + i): the new query i sits at position n_k - n_q + i and
    sees every cached key and the new ones up to itself.  These are the last n_q rows of
    causal_mask(n_k).  PyTorch calls this alignment `causal_lower_right`.
    """
    n_k = _check_sizes(n_q, n_k)
    if n_q > n_k:
        raise ValueError(
            f"n_q = {n_q} new queries cannot be the last positions of only n_k = {n_k} "
            f"keys: the keys include the new tokens, so expected n_q <= n_k"
        )
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(diagonal=n_k - n_q)


def sliding_window_mask(n, window, device=None):
    """Causal mask (n, n) that sees only the last `window` positions, itself included.

    mask[i, j] = (i - window < j <= i), local attention as in Mistral 7B or Gemma 2: each
    query sees at most `window` keys.  A kernel that computes only this band costs
    n * window instead of n^2; adding this dense mask to a full n x n table saves nothing.
    """
    require_size("n", n)
    require_positive_int("window", window)
    full = torch.ones(n, n, dtype=torch.bool, device=device)
    return full.tril() & full.triu(diagonal=1 - window)


def padding_mask(lengths, n, device=None):
    """Mask (B, 1, 1, n) for a batch of sequences padded to n: key j is real if j < length.

    lengths: B ints (a list or a 1-D integer tensor), each between 0 and n.  The two
    singleton dimensions broadcast over heads and queries: every query of sequence b
    may attend to its real keys and to no padding key.
    """
    require_size("n", n)
    if isinstance(lengths, torch.Tensor):
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be a 1-D integer tensor or a list of ints, got a "
                            f"{lengths.dtype} tensor of shape {tuple(lengths.shape)}")
        lengths = lengths.tolist()
    if not isinstance(lengths, (list, tuple)) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in lengths
    ):
        raise TypeError(f"lengths must be a list of ints or a 1-D integer tensor, got {lengths!r}")
    if not lengths or not all(0 <= x <= n for x in lengths):
        raise ValueError(f"lengths must be one or more ints between 0 and n = {n}, got {lengths}")
    positions = torch.arange(n, device=device)
    real = positions < torch.tensor(lengths, device=device)[:, None]
    return real[:, None, None, :]


def combine_masks(*masks):
    """A query may attend where EVERY mask allows it: the logical AND, broadcast.

    `None` entries (no mask) are skipped; returns None when all are None.
    """
    present = [m for m in masks if m is not None]
    for i, m in enumerate(present):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            got = m.dtype if isinstance(m, torch.Tensor) else type(m).__name__
            raise TypeError(f"masks must be boolean tensors (True = may attend) or None, "
                            f"got {got} for mask {i}")
    if not present:
        return None
    try:
        torch.broadcast_shapes(*(m.shape for m in present))
    except RuntimeError:
        shapes = ", ".join(str(tuple(m.shape)) for m in present)
        raise ValueError(f"masks must broadcast to one shape, got {shapes}") from None
    combined = present[0]
    for m in present[1:]:
        combined = combined & m
    return combined


def to_additive(mask, dtype=torch.float32):
    """The boolean mask as numbers to add to the scores: 0 where True, -inf where False.

    -inf, not a large negative number such as -1e9, which fails in float16 and in fully
    masked rows (chapter 3).
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a boolean tensor (True = may attend), got {got}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill(~mask, -math.inf)
