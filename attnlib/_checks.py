"""Argument checks shared by the library: each error names the argument, what it got
and what was expected."""

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
