"""Checks for chapter 4: multi-head attention."""

import torch

from attnlib.attention import scaled_dot_product_attention
from attnlib.exercises import Wrong, call, exercise, same_tensor
from attnlib.multihead import MultiHeadAttention, split_heads

#: The module of the prediction exercise: MultiHeadAttention(d_model, num_heads).
PARAMS_SETTING = {"d_model": 512, "num_heads": 8}


@exercise("ch4.param_count")
def check_param_count(answer):
    d = PARAMS_SETTING["d_model"]
    mha = MultiHeadAttention(**PARAMS_SETTING, device="meta")
    expected = sum(p.numel() for p in mha.parameters())
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise Wrong(f"answer with a whole number of parameters, got {type(answer).__name__}.")
    if answer == expected - 4 * d:
        raise Wrong(f"{answer:,} counts the weights but not the biases: both projections have "
                    f"one ({3 * d} + {d} numbers).")
    if answer != expected:
        raise Wrong(f"the module has {expected:,} parameters, not {answer:,}: W_QKV is "
                    f"{d} x {3 * d} and W_O {d} x {d}, plus their biases, and the heads only cut "
                    f"these matrices into slices.")
    return (f"4 d_model^2 + 4 d_model = {expected:,}, the same for 1, 8 or 64 heads: heads "
            f"split the width, they do not add weights.")


@exercise("ch4.split_heads")
def check_split_heads(my_split_heads):
    gen = torch.Generator().manual_seed(5)
    for shape, heads in (((2, 5, 12), 3), ((1, 4, 8), 4)):
        x = torch.randn(*shape, generator=gen)
        description = f"x of shape {shape} and num_heads = {heads}"
        got = call(my_split_heads, x, heads, called_with=description)
        expected = split_heads(x, heads)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.equal(
                got, x.reshape(expected.shape)):
            raise Wrong(f"for {description} a plain reshape to (B, h, N, d_head) mixes tokens "
                        f"within a head: reshape to (B, N, h, d_head) first, then swap N and h.")
        same_tensor(got, expected, f"the heads for {description}")
    return "each head holds a slice of d_head features of every token: (B, h, N, d_head)."


def _grouped_reference(q, k, v):
    group_size = q.shape[-3] // k.shape[-3]
    k, v = (t.repeat_interleave(group_size, dim=-3) for t in (k, v))
    return scaled_dot_product_attention(q, k, v)


@exercise("ch4.grouped_query")
def check_grouped_query(grouped_query_attention):
    gen = torch.Generator().manual_seed(6)
    for heads, groups in ((4, 2), (6, 3), (4, 1)):
        q = torch.randn(2, heads, 5, 4, generator=gen)
        k, v = (torch.randn(2, groups, 5, 4, generator=gen) for _ in range(2))
        description = f"{heads} query heads and {groups} key/value head(s)"
        got = call(grouped_query_attention, q, k, v, called_with=description)
        tiled = scaled_dot_product_attention(q, *(t.repeat(1, heads // groups, 1, 1)
                                                  for t in (k, v)))
        if 1 < groups < heads and isinstance(got, torch.Tensor) and got.shape == q.shape \
                and torch.allclose(got, tiled, atol=1e-5):
            raise Wrong(f"with {description}, query head i must use key/value head "
                        f"i // {heads // groups}; your heads cycle through the groups "
                        f"(repeat) instead of sharing them in blocks (repeat_interleave).")
        same_tensor(got, _grouped_reference(q, k, v), f"the output for {description}")
    return "neighbouring query heads share one key/value head, so the KV cache shrinks by h / g."
