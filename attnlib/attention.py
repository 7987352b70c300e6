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

PyTorch's leniencies are kept: a float mask of another dtype is cast to q's dtype,
`scale` may be a 0-d tensor, and d_k = 0 gives the mean of the values (every score is 0).

`inplace_attention` computes the same thing holding one N x N matrix instead of three
(chapter 5 measures both).
"""

import math
import numbers

import torch

from attnlib._checks import (
    require_mask,
    require_positive_int,
    require_qk,
    require_tensor,
    resolve_scale,
    validate_qkv,
)
from attnlib.masking import causal_mask


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


def attention_scores(q, k, scale=None):
    """Scores Q K^T * scale, with scale = 1/sqrt(d_k) by default.

    q: (..., L, d_k), k: (..., S, d_k)  ->  (..., L, S).
    """
    require_qk(q, k)
    return (q @ k.mT) * resolve_scale(scale, q.shape[-1])


def additive_mask(attn_mask, q, n_keys, batch_shape):
    """The mask as a tensor of q's dtype to add to the scores (0 or -inf for a boolean
    mask), after checking that it broadcasts to the scores' shape `(*batch_shape, L, S)`.

    A floating mask of another dtype (float32 with float16 queries, say) is cast to q's
    dtype, as PyTorch does.
    """
    require_mask(attn_mask, (*batch_shape, q.shape[-2], n_keys), floating=True)
    if attn_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        return torch.where(attn_mask, zero, zero - math.inf)
    return attn_mask.to(q.dtype)


def _mask_argument(attn_mask, is_causal, q, k):
    """attn_mask, or the top-left causal mask (L, S) when is_causal (never both, as in
    PyTorch)."""
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in PyTorch)")
    return causal_mask(q.shape[-2], k.shape[-2], device=q.device) if is_causal else attn_mask


def scaled_dot_product_attention(
    q, k, v, attn_mask=None, is_causal=False, scale=None, return_weights=False
):
    """softmax(Q K^T * scale + mask) V, with PyTorch's signature and semantics.

    q: (..., L, d_k), k: (..., S, d_k), v: (..., S, d_v)  ->  (..., L, d_v);
    with `return_weights=True`, returns (output, weights) with weights (..., L, S).
    A query with no visible key gets zero weights and a zero output (module docstring).
    """
    batch_shape = validate_qkv(q, k, v)
    attn_mask = _mask_argument(attn_mask, is_causal, q, k)  # is_causal: causal_mask(L, S)
    scores = (q @ k.mT) * resolve_scale(scale, q.shape[-1])
    if attn_mask is not None:
        scores = scores + additive_mask(attn_mask, q, k.shape[-2], batch_shape)
    weights = softmax(scores, dim=-1)
    output = weights @ v
    return (output, weights) if return_weights else output


def inplace_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """softmax(Q K^T * scale + mask) V holding a single N x N matrix at a time.

    Same arguments and result as `scaled_dot_product_attention`, but the scores are
    turned into weights in place: shift, exp and normalise overwrite them, where the
    clearer version keeps scores, exponentials and weights alive together (three
    matrices, chapter 5).  In-place steps destroy what autograd would need, so inputs
    must not require gradients.  Masks cost extra while they are applied: an N x N
    boolean for is_causal, a float copy of a boolean attn_mask.
    """
    batch_shape = validate_qkv(q, k, v)
    if any(t.requires_grad for t in (q, k, v)) and torch.is_grad_enabled():
        raise ValueError("inplace_attention cannot backpropagate (its in-place steps overwrite "
                         "what autograd needs): call it under torch.no_grad(), or use "
                         "attention.scaled_dot_product_attention")
    attn_mask = _mask_argument(attn_mask, is_causal, q, k)
    n_keys = k.shape[-2]
    scores = (q * resolve_scale(scale, q.shape[-1])) @ k.mT  # scaling q costs N x d, not N^2
    if is_causal:
        scores.masked_fill_(attn_mask.logical_not_(), -math.inf)  # our own mask: invert it
    elif attn_mask is not None:
        scores.add_(additive_mask(attn_mask, q, n_keys, batch_shape))
    if n_keys:
        row_max = scores.amax(dim=-1, keepdim=True)
        scores.sub_(torch.where(torch.isfinite(row_max), row_max, 0.0)).exp_()
        total = scores.sum(dim=-1, keepdim=True)
        scores.div_(torch.where(total == 0, 1.0, total))  # a row that sees no key: zeros
    return scores @ v


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


#: Random sequences per measurement of `random_attention_stats`, unless `batch` says otherwise.
STATS_BATCH = 64

#: A row's gradient counts as vanished when its norm is below this (`random_attention_stats`).
VANISHING_GRADIENT = 1e-3


def random_attention_stats(d_k, n=16, scaled=True, temperature=1.0, batch=STATS_BATCH, seed=0):
    """How sharp random attention is, and how much gradient reaches the softmax's input.

    For `batch` sequences of n queries and keys with N(0, 1) entries of width d_k:
    Z = Q K^T * scale / T (scale = 1/sqrt(d_k) if `scaled`, else 1; T = `temperature`),
    A = softmax(Z) row by row, and the loss L = sum(A * G) with G ~ N(0, 1), differentiated
    by autograd.
    Returns a dict: "entropy", the mean over rows of A; "grad_norm", the median over rows
    of the norm of dL/dZ_i, the gradient where the softmax receives the scores (after the
    division by T, so that unscaled scores with T = sqrt(d_k) measure exactly as scaled
    ones with T = 1); "vanishing", the fraction of rows where that norm is below
    `VANISHING_GRADIENT`.
    """
    require_positive_int("d_k", d_k)
    require_positive_int("n", n)
    require_positive_int("batch", batch)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, n, d_k, generator=gen, dtype=torch.float64)
    g = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    logits = (attention_scores(q, k, scale=None if scaled else 1.0) / temperature).requires_grad_()
    weights = softmax(logits)
    (weights * g).sum().backward()
    row_grad = logits.grad.norm(dim=-1)
    return {
        "entropy": row_entropy(weights.detach()).mean().item(),
        "grad_norm": row_grad.median().item(),
        "vanishing": (row_grad < VANISHING_GRADIENT).double().mean().item(),
    }
