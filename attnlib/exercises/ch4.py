"""Checks for chapter 4: multi-head attention."""

import torch

from attnlib import multihead
from attnlib.attention import scaled_dot_product_attention
from attnlib.exercises import Wrong, call, exercise, same_tensor
from attnlib.multihead import split_heads

#: The sentence of the prediction exercise, and the token whose row is asked about.
TARGETS_SENTENCE = "she deposited cash at the bank"
TARGETS_TOKEN = "bank"


@exercise("ch4.head_targets")
def check_head_targets(answer):
    tokens, x = multihead.embed_with_positions(TARGETS_SENTENCE)
    with torch.no_grad():
        _, weights = multihead.hand_built_heads()(x, return_weights=True)
    row = tokens.index(TARGETS_TOKEN)
    expected = {name: tokens[int(weights[h, row].argmax())]
                for h, name in enumerate(multihead.HEAD_NAMES)}
    if not isinstance(answer, dict):
        raise Wrong(f"answer with a dict such as {{'previous token': 'word', 'topic': 'word'}}, "
                    f"got {type(answer).__name__}.")
    missing = [name for name in expected if name not in answer]
    if missing:
        raise Wrong(f"the dict needs the keys {', '.join(map(repr, expected))}; missing "
                    f"{', '.join(map(repr, missing))}.")
    for name, word in expected.items():
        got = answer[name]
        if not isinstance(got, str) or got.strip().lower() not in tokens:
            raise Wrong(f"{name!r} should be one word of {TARGETS_SENTENCE!r}, got {got!r}.")
        if got.strip().lower() != word:
            hint = {"previous token": "its query is bank's position turned back by one step",
                    "topic": "its key is how much water or money a word carries, and the "
                             "largest amount wins"}[name]
            raise Wrong(f"the {name} head does not pick {got!r} for {TARGETS_TOKEN!r}: {hint}.")
    return (f"one head finds {expected['previous token']!r} right before bank, the other "
            f"{expected['topic']!r}, the word with the most money: two places at once.")


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
