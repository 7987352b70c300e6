"""Chapter 2: scaled dot-product attention, built from matrix products and a softmax.

    S = Q K^T * scale  (scale = 1/sqrt(d_k) by default),   A = softmax(S) row by row,   O = A V

Layout and semantics are those of `torch.nn.functional.scaled_dot_product_attention`:
q (..., L, d_k), k (..., S, d_k), v (..., S, d_v), any leading batch/head dimensions
that broadcast; a boolean `attn_mask` is True where a query MAY attend, a float mask is
added to the scores; `is_causal=True` lets query i see keys 0..i, counted from the first
query and the first key ("top-left" alignment, as PyTorch does when L != S).

Policy for a query that can see no key (a fully masked row, or no keys at all): its
weights are all zero and its output is zero, never NaN.  This is what PyTorch's fused
CPU kernel returns; a plain softmax would give NaN (0/0), and the NaN would then spread
to every later layer.  FlashAttention (chapter 6) follows the same policy.  NaN in the
inputs still gives NaN.
"""

import math
import numbers

import torch

from attnlib._checks import require_tensor


def softmax(x, dim=-1):
    """Numerically stable softmax along `dim`: exp(x - max) / sum(exp(x - max)).

    Subtracting the row maximum changes nothing mathematically (softmax is shift
    invariant) but keeps every exponent <= 0, so logits of 1e4 do not overflow.
    A slice that is entirely -inf gives zeros instead of NaN (see the module's policy).
    """
    require_tensor("x", x)
    if x.shape[dim] == 0:
        return x.clone()
    row_max = x.amax(dim=dim, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exps = torch.exp(x - row_max)  # exp(-inf) = 0 for masked entries
    total = exps.sum(dim=dim, keepdim=True)
    return exps / torch.where(total == 0, torch.ones_like(total), total)


def _check_scale(scale):
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale must be a number or None, got {type(scale).__name__}")


def attention_scores(q, k, scale=None):
    """Scores Q K^T * scale, with scale = 1/sqrt(d_k) by default.

    q: (..., L, d_k), k: (..., S, d_k)  ->  (..., L, S).
    """
    require_tensor("q", q, min_dim=2)
    require_tensor("k", k, min_dim=2)
    _check_scale(scale)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d_k, got q of shape "
            f"{tuple(q.shape)} (d_k = {q.shape[-1]}) and k of shape {tuple(k.shape)} "
            f"(d_k = {k.shape[-1]})"
        )
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
    _broadcast_batch(("q", q), ("k", k))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (q @ k.mT) * scale


def _broadcast_batch(*named):
    try:
        return torch.broadcast_shapes(*(t.shape[:-2] for _, t in named))
    except RuntimeError:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in named)
        raise ValueError(
            f"the leading (batch, heads) dimensions must broadcast, got {shapes}"
        ) from None


def validate_qkv(q, k, v):
    """Check q (..., L, d_k), k (..., S, d_k), v (..., S, d_v): tensors of one floating
    dtype whose leading dimensions broadcast.  Returns the broadcast batch shape."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(name, t, min_dim=2)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d_k, got q of shape "
            f"{tuple(q.shape)} (d_k = {q.shape[-1]}) and k of shape {tuple(k.shape)} "
            f"(d_k = {k.shape[-1]})"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions S (second-to-last "
            f"dimension), got k of shape {tuple(k.shape)} and v of shape {tuple(v.shape)}"
        )
    return _broadcast_batch(("q", q), ("k", k), ("v", v))


def additive_mask(attn_mask, q, n_keys, batch_shape):
    """The mask as a float tensor to add to the scores (0 or -inf for a boolean mask),
    after checking that it broadcasts to the scores' shape (..., L, S)."""
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
        raise TypeError(
            f"attn_mask must be boolean (True = may attend) or have q's dtype {q.dtype} "
            f"(added to the scores), got {attn_mask.dtype}"
        )
    target = (*batch_shape, q.shape[-2], n_keys)
    try:
        fits = torch.broadcast_shapes(attn_mask.shape, target) == torch.Size(target)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the "
            f"scores' shape {target} = (*batch, L queries, S keys)"
        )
    if attn_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        return torch.where(attn_mask, zero, zero - math.inf)
    return attn_mask


def scaled_dot_product_attention(
    q, k, v, attn_mask=None, is_causal=False, scale=None, return_weights=False
):
    """softmax(Q K^T * scale + mask) V, with PyTorch's signature and semantics.

    q: (..., L, d_k), k: (..., S, d_k), v: (..., S, d_v)  ->  (..., L, d_v);
    with `return_weights=True`, returns (output, weights) with weights (..., L, S).
    A query with no visible key gets zero weights and a zero output (module docstring).
    """
    batch_shape = validate_qkv(q, k, v)
    _check_scale(scale)
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in PyTorch)")
    n_queries, n_keys = q.shape[-2], k.shape[-2]
    scores = attention_scores(q, k, scale)
    if is_causal:
        attn_mask = torch.ones(n_queries, n_keys, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores + additive_mask(attn_mask, q, n_keys, batch_shape)
    weights = softmax(scores, dim=-1)
    output = weights @ v
    return (output, weights) if return_weights else output


# --- why divide by sqrt(d_k): the experiments of chapter 2 --------------------------------


def row_entropy(weights):
    """Entropy of each row of attention weights, in nats: -sum_j A_ij log A_ij (0 log 0 = 0).

    weights: (..., L, S) -> (..., L).  ln S for a uniform row, 0 for a one-hot row.
    """
    require_tensor("weights", weights, min_dim=1)
    logs = torch.log(torch.where(weights > 0, weights, torch.ones_like(weights)))
    return -(weights * logs).sum(dim=-1)


def dot_product_variance(d_k, samples=20_000, seed=0):
    """Sample variance of q . k for q, k with independent N(0, 1) entries (theory: d_k)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(samples, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(samples, d_k, generator=gen, dtype=torch.float64)
    return (q * k).sum(dim=-1).var().item()


def random_attention_stats(d_k, n=16, scaled=True, temperature=1.0, batch=64, seed=0):
    """How sharp random attention is, and how much gradient flows back into the scores.

    For `batch` sequences of n queries and keys with N(0, 1) entries of width d_k:
    S = Q K^T (divided by sqrt(d_k) if `scaled`), A = softmax(S / temperature), and the
    loss L = sum(A * G) with G ~ N(0, 1), differentiated by autograd.  Returns a dict:
    "entropy", the mean over rows of A; "grad_norm", the median over rows of the norm of dL/dS_i;
    "vanishing", the fraction of rows where that norm is below 1e-3.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, n, d_k, generator=gen, dtype=torch.float64)
    g = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    scores = attention_scores(q, k, scale=None if scaled else 1.0).requires_grad_()
    weights = softmax(scores / temperature)
    (weights * g).sum().backward()
    row_grad = scores.grad.norm(dim=-1)
    return {
        "entropy": row_entropy(weights.detach()).mean().item(),
        "grad_norm": row_grad.median().item(),
        "vanishing": (row_grad < 1e-3).double().mean().item(),
    }
