"""Linear attention: the softmax's exp(q . k) replaced by phi(q) . phi(k), so that the
N x N table never has to exist.

Katharopoulos et al. (2020), "Transformers are RNNs: Fast Autoregressive Transformers with
Linear Attention" (https://arxiv.org/abs/2006.16236), with a feature map phi >= 0:

    O_i = phi(q_i)^T S / phi(q_i)^T z,   S = sum_j phi(k_j) v_j^T  (d_k x d_v),  z = sum_j phi(k_j)

By associativity, (phi(Q) phi(K)^T) V = phi(Q) (phi(K)^T V): N d_k d_v work instead of
N^2 d.  With a causal mask the sums run over j <= i, so S and z are prefix sums,
S_i = S_{i-1} + phi(k_i) v_i^T: a recurrent network whose state is a d_k x d_v matrix.
The paper's feature map is phi(x) = elu(x) + 1, positive so that the normaliser
phi(q)^T z never vanishes.  Three ways to compute the same numbers:

- `attention_without_softmax`: the N x N table phi(Q) phi(K)^T, masked and normalised row
  by row, times V (the quadratic reference, any mask);
- `linear_attention`: the parallel form (one d_k x d_v state, or its N prefix sums when
  causal);
- `linear_attention_recurrent`: one token at a time with `linear_attention_step`, the way
  a model generates.

`normalize=False` drops the division by phi(q)^T z and `feature_map=None` means phi(x) =
x: with both, O_i = sum_{j <= i} (q_i . k_j) v_j, the plain linear memory that
`attnlib.ssm.selective_scan` computes with no decay (Dao & Gu, 2024,
https://arxiv.org/abs/2405.21060, call this duality of attention and state-space models).
A query whose normaliser is 0 (no key) gets a zero output, as in `attnlib.attention`.
"""

import torch

from attnlib._checks import (
    require_float_dtype,
    require_mask,
    require_positive_int,
    require_tensor,
    validate_qkv,
)
from attnlib.masking import causal_mask


def elu_feature_map(x):
    """phi(x) = elu(x) + 1: x + 1 for x > 0, exp(x) for x <= 0; always > 0 (Katharopoulos
    et al., 2020, https://arxiv.org/abs/2006.16236, section 3.2).

    Computed as exp(x) below 0 rather than as elu(x) + 1, whose rounding loses the small
    values (in float32, elu(-20) + 1 is exactly 0).
    """
    return torch.where(x > 0, x + 1, torch.exp(x.clamp(max=0)))


def _features(feature_map, x):
    if feature_map is None:
        return x
    if not callable(feature_map):
        raise TypeError(f"feature_map must be a function such as elu_feature_map, or None for "
                        f"phi(x) = x, got {type(feature_map).__name__}")
    return feature_map(x)


def _divide(numerator, normaliser):
    """numerator / normaliser, with 0 where the normaliser is 0 (a query that sees no key)."""
    return numerator / torch.where(normaliser == 0, torch.ones_like(normaliser), normaliser)


def _require_self_attention(name, q, k):
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"{name} is causal self-attention: q and k must have the same length "
                         f"N, got q of shape {tuple(q.shape)} and k of shape {tuple(k.shape)}")


def attention_without_softmax(q, k, v, attn_mask=None, is_causal=False, *,
                              feature_map=elu_feature_map, normalize=True):
    """The quadratic form: A = phi(Q) phi(K)^T, 0 where the mask forbids, each row divided
    by its sum (when normalize); O = A V.

    q: (..., L, d_k), k: (..., S, d_k), v: (..., S, d_v) -> (..., L, d_v).  attn_mask:
    boolean, True where a query may attend (a float mask has no meaning without the
    softmax); is_causal: query i sees keys 0..i.  It builds the L x S table, as softmax
    attention does, and is the reference that the linear forms equal.
    """
    batch_shape = validate_qkv(q, k, v)
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in PyTorch)")
    if is_causal:
        attn_mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
    weights = _features(feature_map, q) @ _features(feature_map, k).mT
    if attn_mask is not None:
        require_mask(attn_mask, (*batch_shape, q.shape[-2], k.shape[-2]))
        weights = weights.masked_fill(~attn_mask, 0)
    if normalize:
        weights = _divide(weights, weights.sum(dim=-1, keepdim=True))
    return weights @ v


def linear_attention(q, k, v, is_causal=False, *, feature_map=elu_feature_map, normalize=True):
    """The parallel form: O = phi(Q) S / phi(Q) z, never an N x N table.

    q: (..., L, d_k), k: (..., S, d_k), v: (..., S, d_v) -> (..., L, d_v).  Not causal:
    one state S = phi(K)^T V (d_k x d_v) and z = sum_j phi(k_j), 4 L d_k d_v FLOPs in the
    two products.  Causal (L = S = N): the N prefix states S_i = sum_{j <= i} phi(k_j) v_j^T
    by a cumulative sum, the same FLOPs but N d_k d_v numbers of memory
    (`linear_prefix_bytes`).  Equal to `attention_without_softmax` with the same options.
    """
    validate_qkv(q, k, v)
    fq, fk = _features(feature_map, q), _features(feature_map, k)
    if is_causal:
        _require_self_attention("linear_attention with is_causal=True", q, k)
        states = (fk.unsqueeze(-1) @ v.unsqueeze(-2)).cumsum(dim=-3)  # (..., N, d_k, d_v)
        numerator = (fq.unsqueeze(-2) @ states).squeeze(-2)
        normaliser = (fq * fk.cumsum(dim=-2)).sum(dim=-1, keepdim=True)
    else:
        numerator = fq @ (fk.mT @ v)
        normaliser = (fq * fk.sum(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True)
    return _divide(numerator, normaliser) if normalize else numerator


def _step(state, normaliser, q, k, v, feature_map, normalize):
    fk = _features(feature_map, k)
    state = state + fk.unsqueeze(-1) @ v.unsqueeze(-2)
    normaliser = normaliser + fk
    fq = _features(feature_map, q)
    out = (fq.unsqueeze(-2) @ state).squeeze(-2)
    if normalize:
        out = _divide(out, (fq * normaliser).sum(dim=-1, keepdim=True))
    return out, state, normaliser


def linear_attention_step(state, normaliser, q, k, v, *, feature_map=elu_feature_map,
                          normalize=True):
    """One token of causal linear attention: write, then read.

    state S: (..., d_k, d_v), normaliser z: (..., d_k); q, k: (..., d_k), v: (..., d_v).
    S' = S + phi(k) v^T, z' = z + phi(k), out = phi(q)^T S' / phi(q)^T z' (the token sees
    itself).  Returns (out (..., d_v), S', z').  4 d_k d_v FLOPs, whatever the position.
    """
    for name, t, dims in (("state", state, 2), ("normaliser", normaliser, 1), ("q", q, 1),
                          ("k", k, 1), ("v", v, 1)):
        require_tensor(name, t, min_dim=dims)
    d_k, d_v = k.shape[-1], v.shape[-1]
    if q.shape[-1] != d_k or state.shape[-2:] != (d_k, d_v) or normaliser.shape[-1] != d_k:
        raise ValueError(f"expected q, k (..., d_k), v (..., d_v), state (..., d_k, d_v) and "
                         f"normaliser (..., d_k) with d_k = {d_k}, d_v = {d_v} (from k and v), "
                         f"got q {tuple(q.shape)}, state {tuple(state.shape)} and normaliser "
                         f"{tuple(normaliser.shape)}")
    return _step(state, normaliser, q, k, v, feature_map, normalize)


def linear_attention_recurrent(q, k, v, *, feature_map=elu_feature_map, normalize=True):
    """Causal linear attention as a recurrent network: `linear_attention_step` for each
    token in turn, carrying a d_k x d_v state and a d_k normaliser.

    q, k: (..., N, d_k), v: (..., N, d_v) -> (..., N, d_v); equal to
    `linear_attention(q, k, v, is_causal=True)`.  Memory: the state, whatever N.
    """
    batch_shape = validate_qkv(q, k, v)
    _require_self_attention("linear_attention_recurrent", q, k)
    d_k, d_v = k.shape[-1], v.shape[-1]
    state = q.new_zeros(*batch_shape, d_k, d_v)
    normaliser = q.new_zeros(*batch_shape, d_k)
    outputs = []
    for t in range(q.shape[-2]):
        out, state, normaliser = _step(state, normaliser, q[..., t, :], k[..., t, :],
                                       v[..., t, :], feature_map, normalize)
        outputs.append(out)
    if not outputs:
        return v.new_zeros(*batch_shape, 0, d_v)
    return torch.stack(outputs, dim=-2)


# --- costs -----------------------------------------------------------------------------


def _check(**sizes):
    for name, value in sizes.items():
        require_positive_int(name, value)


def linear_attention_flops(n, d, heads=1, batch=1):
    """Forward FLOPs of linear attention's matrix products: 4 * batch * heads * n * d^2.

    Each token writes phi(k) v^T (d x d multiply-adds) and reads phi(q)^T S (d x d
    more), 2 FLOPs per multiply-add, whichever form computes it, causal or not; the
    feature map, the normaliser and the prefix sums (O(n d) or O(n d^2) additions) are
    left out, as `cost.attention_flops` leaves out the softmax.  Linear in n, where
    attention's 4 n^2 d is quadratic: linear attention does less work once n > d.
    """
    _check(n=n, d=d, heads=heads, batch=batch)
    return 4 * batch * heads * n * d * d


def linear_state_bytes(d, heads=1, layers=1, batch=1, dtype=torch.float16):
    """Bytes of what causal generation keeps: the d x d state S and the d normaliser z per
    head and layer, batch * layers * heads * (d^2 + d) * (bytes per element), whatever
    the length, where `cost.kv_cache_bytes` grows with every token."""
    _check(d=d, heads=heads, layers=layers, batch=batch)
    return batch * layers * heads * (d * d + d) * require_float_dtype(dtype).itemsize


def linear_prefix_bytes(n, d, heads=1, batch=1, dtype=torch.float32):
    """Bytes of the n prefix states that the causal parallel form holds: batch * heads *
    n * d^2 * (bytes per element).  Linear in n, but d^2 per token: it passes the n x n
    scores of `cost.score_matrix_bytes` only when n > d^2."""
    _check(n=n, d=d, heads=heads, batch=batch)
    return batch * heads * n * d * d * require_float_dtype(dtype).itemsize
