"""Checks for chapter 4: multi-head attention."""

import torch

from attnlib import multihead
from attnlib.attention import scaled_dot_product_attention
from attnlib.exercises import (
    Wrong,
    call,
    exercise,
    matches,
    mistake_named,
    refuse_library,
    require_keys,
    same_tensor,
    scale_mistakes,
    wrong_prediction,
)
from attnlib.multihead import merge_heads

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
    require_keys(answer, list(expected), "{'previous token': 'word', 'topic': 'word'}")
    for name, word in expected.items():
        got = answer[name]
        if not isinstance(got, str) or got.strip().lower() not in tokens:
            raise Wrong(f"{name!r} should be one word of {TARGETS_SENTENCE!r}, got {got!r}.")
        if name == "topic" and got.strip().lower() == TARGETS_TOKEN:
            raise Wrong(f"{TARGETS_TOKEN!r} carries no topic (no water, no money), so the topic "
                        f"head's key for it is 0: look for the word with the most money.")
        if got.strip().lower() != word:
            hint = {"previous token": "its query is bank's position turned back by one step",
                    "topic": "its key is how much water or money a word carries, and the "
                             "largest amount wins"}[name]
            wrong_prediction("ch4.head_targets",
                             f"the {name} head does not pick {got!r} for {TARGETS_TOKEN!r}: "
                             f"{hint}", ", ".join(f"the {head} head picks {target!r}"
                                                  for head, target in expected.items()))
    return (f"one head finds {expected['previous token']!r} right before bank, the other "
            f"{expected['topic']!r}, the word with the most money: two places at once.")


def _view_hint(error):
    if "view size is not compatible" in str(error):
        return ("view fails after transpose (the tensor is no longer contiguous in memory): "
                "use reshape.")
    return None


@exercise("ch4.merge_heads")
def check_merge_heads(my_merge_heads):
    refuse_library(my_merge_heads, (merge_heads,), "with transpose and reshape")
    gen = torch.Generator().manual_seed(5)
    for shape in ((2, 3, 5, 4), (1, 4, 2, 3)):
        x = torch.randn(*shape, generator=gen)
        description = f"x of shape {shape} (B, h, N, d_head)"
        got = call(my_merge_heads, x, called_with=description, hint=_view_hint)
        expected = merge_heads(x)
        b, h, n, d_head = shape
        if matches(got, x.reshape(b, n, h * d_head)):
            raise Wrong(f"for {description} a plain reshape to (B, N, h * d_head) mixes "
                        f"tokens: bring each token's heads together first, "
                        f"x.transpose(1, 2), then reshape.")
        if matches(got, x.permute(0, 2, 3, 1).reshape(b, n, h * d_head)):
            raise Wrong(f"for {description} your features alternate between heads: head j "
                        f"must give the contiguous features j * d_head ... "
                        f"(j + 1) * d_head - 1, so flatten (B, N, h, d_head), not "
                        f"(B, N, d_head, h).")
        same_tensor(got, expected, f"the merged heads for {description}")
    return ("each token gets its heads' outputs side by side, head 0's features first: "
            "(B, N, h * d_head), ready for W_O.")


def _grouped_reference(q, k, v, scale=None):
    group_size = q.shape[-3] // k.shape[-3]
    k, v = (t.repeat_interleave(group_size, dim=-3) for t in (k, v))
    return scaled_dot_product_attention(q, k, v, scale=scale)


def _works_with_as_many_kv_heads(grouped_query_attention, q, k, v):
    """Whether the learner's function is right when k and v are already expanded to h heads."""
    expanded_k, expanded_v = (t.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
                              for t in (k, v))
    try:
        return matches(grouped_query_attention(q, expanded_k, expanded_v),
                       _grouped_reference(q, k, v))
    except Exception:
        return False


@exercise("ch4.grouped_query")
def check_grouped_query(grouped_query_attention):
    gen = torch.Generator().manual_seed(6)
    for heads, groups, d_v in ((4, 2, 3), (6, 3, 4), (4, 1, 2)):
        q = torch.randn(2, heads, 5, 4, generator=gen)
        k = torch.randn(2, groups, 5, 4, generator=gen)
        v = torch.randn(2, groups, 5, d_v, generator=gen)
        description = (f"{heads} query heads and {groups} key/value head(s), d = 4 and values "
                       f"of width {d_v}")
        def hint(error, q=q, k=k, v=v, heads=heads, groups=groups):
            if groups > 1 and _works_with_as_many_kv_heads(grouped_query_attention, q, k, v):
                return (f"It works when k and v have {heads} heads: k and v have g heads, so "
                        f"first give each query head its key/value head (repeat_interleave).")
            return None

        got = call(grouped_query_attention, q, k, v, called_with=description, hint=hint)
        tiled = scaled_dot_product_attention(q, *(t.repeat(1, heads // groups, 1, 1)
                                                  for t in (k, v)))
        if 1 < groups < heads and matches(got, tiled):
            raise Wrong(f"with {description}, query head i must use key/value head "
                        f"i // {heads // groups}; your heads cycle through the groups "
                        f"(repeat) instead of sharing them in blocks (repeat_interleave).")
        expected = _grouped_reference(q, k, v)
        what = mistake_named(got, scale_mistakes(
            lambda scale, q=q, k=k, v=v: _grouped_reference(q, k, v, scale), 4, d_v), expected)
        if what:
            raise Wrong(f"with {description}, your output {what}.")
        same_tensor(got, expected, f"the output for {description}")
    return "neighbouring query heads share one key/value head, so the KV cache shrinks by h / g."
