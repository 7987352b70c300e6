"""Argument checks and defaults shared by the library: each error names the argument,
what it got and what was expected."""

import math
import numbers

import torch


def require_tensor(name, x, *, min_dim=1, floating=True):
    """Raise TypeError/ValueError unless `x` is a tensor with at least `min_dim` dimensions
    (and a floating-point dtype when `floating`)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}"
        )


def require_positive_int(name, value):
    """Raise unless `value` is an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def require_size(name, value):
    """Raise unless `value` is an int >= 0, a length that may be empty (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def resolve_scale(scale, d_k):
    """The factor applied to the scores: `scale` as a float, or 1/sqrt(d_k) when it is None.

    `scale` may be a number or a 0-d tensor, as in PyTorch.  With d_k = 0 every score is
    an empty dot product, 0, whatever the scale: 1.0 stands in for 1/sqrt(0), and each
    query averages the values, as PyTorch does.
    """
    if isinstance(scale, torch.Tensor) and scale.dim() == 0 and not scale.dtype == torch.bool:
        return float(scale)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        got = f"a tensor of shape {tuple(scale.shape)}" if isinstance(scale, torch.Tensor) \
            else type(scale).__name__
        raise TypeError(f"scale must be a number, a 0-d tensor or None, got {got}")
    if scale is not None:
        return float(scale)
    return 1.0 / math.sqrt(d_k) if d_k > 0 else 1.0


def broadcast_batch(*named):
    """The broadcast shape of the leading (batch, heads) dimensions of ("name", tensor)
    pairs, all but the last two dimensions of each; ValueError naming them if they clash."""
    try:
        return torch.broadcast_shapes(*(t.shape[:-2] for _, t in named))
    except RuntimeError:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in named)
        raise ValueError(
            f"the leading (batch, heads) dimensions must broadcast, got {shapes}"
        ) from None


def require_qk(q, k):
    """Check q (..., L, d_k) and k (..., S, d_k): tensors of one floating dtype, the same
    width d_k, leading dimensions that broadcast.  Returns the broadcast batch shape."""
    require_tensor("q", q, min_dim=2)
    require_tensor("k", k, min_dim=2)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d_k, got q of shape "
            f"{tuple(q.shape)} (d_k = {q.shape[-1]}) and k of shape {tuple(k.shape)} "
            f"(d_k = {k.shape[-1]})"
        )
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
    return broadcast_batch(("q", q), ("k", k))


def validate_qkv(q, k, v):
    """Check q (..., L, d_k), k (..., S, d_k), v (..., S, d_v): tensors of one floating
    dtype whose leading dimensions broadcast.  Returns the broadcast batch shape."""
    require_qk(q, k)
    require_tensor("v", v, min_dim=2)
    if v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions S (second-to-last "
            f"dimension), got k of shape {tuple(k.shape)} and v of shape {tuple(v.shape)}"
        )
    return broadcast_batch(("q", q), ("k", k), ("v", v))


def require_mask(attn_mask, target, *, floating=False):
    """Raise unless `attn_mask` is a boolean tensor (True = may attend), or any floating
    tensor when `floating`, that broadcasts to the scores' shape `target` = (*batch, L, S)."""
    kinds = "a boolean tensor (True = may attend)" + (
        " or a floating one (added to the scores)" if floating else "")
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be {kinds} or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not (floating and attn_mask.is_floating_point()):
        raise TypeError(f"attn_mask must be {kinds}, got {attn_mask.dtype}")
    target = tuple(target)
    try:
        fits = torch.broadcast_shapes(attn_mask.shape, target) == torch.Size(target)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the "
            f"scores' shape {target} = (*batch, L queries, S keys)"
        )


def require_float_dtype(dtype, name="dtype"):
    """Return `dtype` if it is a floating-point torch dtype, else raise TypeError."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"{name} must be a torch dtype such as torch.float16, got {type(dtype).__name__} "
            f"{dtype!r}"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point dtype such as torch.float16, "
                        f"got {dtype}")
    return dtype
