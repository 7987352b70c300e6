import math

import torch

from attnlib import multihead
from attnlib.exercises.ch4 import TARGETS_SENTENCE, TARGETS_TOKEN
from attnlib.multihead import merge_heads
from attnlib.projections import VOCABULARY
from tests.exercise_cases import (
    assert_accepts,
    assert_hints_then_reveals,
    assert_refuses_the_library,
    assert_rejects,
)


def reference_head_targets(sentence, token):
    """From the rules of the hand-built heads, not from running them: the word just before
    `token`, and the word of the sentence with the most water or money."""
    tokens = sentence.split()
    previous = tokens[tokens.index(token) - 1]
    amount = {t: VOCABULARY[t].get("water", 0.0) + VOCABULARY[t].get("money", 0.0)
              for t in tokens}
    return {"previous token": previous, "topic": max(amount, key=amount.get)}


def reference_merge_heads(x):
    """Token i's features: head 0's row i, then head 1's, ... (a loop, not a reshape)."""
    return torch.cat([x[:, j] for j in range(x.shape[1])], dim=-1)


def reference_grouped_query(q, k, v):
    group_size = q.shape[-3] // k.shape[-3]
    heads = []
    for i in range(q.shape[-3]):
        k_i, v_i = k[:, i // group_size], v[:, i // group_size]
        weights = torch.softmax(q[:, i] @ k_i.mT / math.sqrt(q.shape[-1]), dim=-1)
        heads.append(weights @ v_i)
    return torch.stack(heads, dim=1)


REFERENCES = {
    "ch4.head_targets": reference_head_targets(TARGETS_SENTENCE, TARGETS_TOKEN),
    "ch4.merge_heads": reference_merge_heads,
    "ch4.grouped_query": reference_grouped_query,
}


def test_head_targets_feedback():
    right = REFERENCES["ch4.head_targets"]
    assert right == {"previous token": "the", "topic": "cash"}
    assert_accepts("ch4.head_targets", {"previous token": " The", "topic": "CASH "})
    assert_rejects("ch4.head_targets", dict(right, topic="deposited"),
                   "the topic head does not pick 'deposited' for 'bank'")
    assert_rejects("ch4.head_targets", dict(right, **{"previous token": "cash"}),
                   "turned back by one step")
    assert_rejects("ch4.head_targets", dict(right, topic="river"), "should be one word of")
    assert_rejects("ch4.head_targets", dict(right, topic="bank"), "'bank' carries no topic")
    assert_rejects("ch4.head_targets", {"topic": "cash"}, "missing 'previous token'")


def test_head_targets_hints_first_and_names_the_words_after_two_wrong_tries():
    right = REFERENCES["ch4.head_targets"]
    assert_hints_then_reveals("ch4.head_targets", dict(right, topic="deposited"),
                              "the largest amount wins",
                              "the previous token head picks 'the', the topic head picks 'cash'")


def test_merge_heads_feedback_names_each_mistake():
    def plain_reshape(x):
        b, h, n, d = x.shape
        return x.reshape(b, n, h * d)

    def features_interleaved(x):
        b, h, n, d = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, n, h * d)

    def view_after_transpose(x):
        b, h, n, d = x.shape
        return x.transpose(1, 2).view(b, n, h * d)

    def no_merge(x):
        return x

    assert_rejects("ch4.merge_heads", plain_reshape, "a plain reshape to (B, N, h * d_head)")
    assert_rejects("ch4.merge_heads", features_interleaved,
                   "head j must give the contiguous features j * d_head")
    assert_rejects("ch4.merge_heads", view_after_transpose, "use reshape")
    assert_rejects("ch4.merge_heads", no_merge,
                   "should have shape (2, 5, 12), but yours has shape (2, 3, 5, 4)")


class Heads:
    """A learner's class whose method hands the work to the library."""

    def merge(self, x):
        return multihead.merge_heads(x)


def test_merge_heads_refuses_the_library_however_it_is_passed():
    assert_refuses_the_library("ch4.merge_heads", merge_heads)
    assert_rejects("ch4.merge_heads", lambda x: merge_heads(x),
                   "your function calls attnlib's own merge_heads: the exercise asks you to "
                   "write it yourself, with transpose and reshape")
    assert_rejects("ch4.merge_heads", Heads().merge, "your function calls attnlib's own")
    assert_rejects("ch4.merge_heads", multihead.merge_heads,
                   "you passed attnlib's own merge_heads: write your own, with transpose and "
                   "reshape")


def test_merge_heads_accepts_permute_and_flatten():
    assert_accepts("ch4.merge_heads", lambda x: x.permute(0, 2, 1, 3).flatten(start_dim=2))


def test_grouped_query_feedback_spots_tiling():
    def tiled(q, k, v):
        times = q.shape[1] // k.shape[1]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat(1, times, 1, 1), v.repeat(1, times, 1, 1))

    def first_group_only(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k[:, :1], v[:, :1])

    def not_expanded(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    assert_rejects("ch4.grouped_query", tiled, "query head i must use key/value head i // 2")
    assert_rejects("ch4.grouped_query", first_group_only, "not the right values")
    assert_rejects("ch4.grouped_query", not_expanded,
                   "k and v have g heads, so first give each query head its key/value head")


def grouped_with_scale(scale_of):
    """A learner's grouped-query attention whose scale is scale_of(q, v)."""
    def grouped_query_attention(q, k, v):
        group_size = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group_size, dim=1) for t in (k, v))
        return torch.softmax(q @ k.mT * scale_of(q, v), dim=-1) @ v
    return grouped_query_attention


def test_grouped_query_names_a_missing_or_wrong_scale():
    assert_rejects("ch4.grouped_query", grouped_with_scale(lambda q, v: 1.0),
                   "your output is attention without the division by sqrt(d_k)")
    assert_rejects("ch4.grouped_query",
                   grouped_with_scale(lambda q, v: 1 / math.sqrt(v.shape[-1])),
                   "divides the scores by sqrt(d_v) = sqrt(3), the width of the values")
    assert_accepts("ch4.grouped_query",
                   grouped_with_scale(lambda q, v: 1 / math.sqrt(q.shape[-1])))
