import math

import pytest
import torch

from attnlib.exercises.ch4 import PARAMS_SETTING
from tests.exercise_cases import assert_accepts, assert_rejects


def reference_param_count(d_model, num_heads):
    d_head = d_model // num_heads
    per_head = 3 * (d_model * d_head + d_head)  # W_Q, W_K, W_V slices and their biases
    return num_heads * per_head + d_model * d_model + d_model  # plus W_O and its bias


def reference_split_heads(x, num_heads):
    d_head = x.shape[-1] // num_heads
    return torch.stack([x[..., j * d_head:(j + 1) * d_head] for j in range(num_heads)], dim=-3)


def reference_grouped_query(q, k, v):
    group_size = q.shape[-3] // k.shape[-3]
    heads = []
    for i in range(q.shape[-3]):
        k_i, v_i = k[:, i // group_size], v[:, i // group_size]
        weights = torch.softmax(q[:, i] @ k_i.mT / math.sqrt(q.shape[-1]), dim=-1)
        heads.append(weights @ v_i)
    return torch.stack(heads, dim=1)


REFERENCES = {
    "ch4.param_count": reference_param_count(**PARAMS_SETTING),
    "ch4.split_heads": reference_split_heads,
    "ch4.grouped_query": reference_grouped_query,
}


@pytest.mark.parametrize("name", REFERENCES)
def test_reference_answers_pass(name):
    assert_accepts(name, REFERENCES[name])


def test_param_count_feedback():
    right = REFERENCES["ch4.param_count"]
    assert_rejects("ch4.param_count", 4 * 512 * 512, "counts the weights but not the biases")
    assert_rejects("ch4.param_count", 8 * right,
                   "the module has 1,050,624 parameters, not 8,404,992")
    assert_rejects("ch4.param_count", float(right), "whole number")


def test_split_heads_feedback_spots_the_reshape_without_transpose():
    def plain_reshape(x, num_heads):
        b, n, d = x.shape
        return x.reshape(b, num_heads, n, d // num_heads)

    def no_heads_dim(x, num_heads):
        return x

    assert_rejects("ch4.split_heads", plain_reshape, "a plain reshape to (B, h, N, d_head)")
    assert_rejects("ch4.split_heads", no_heads_dim,
                   "should have shape (2, 3, 5, 4), but yours has shape (2, 5, 12)")


def test_grouped_query_feedback_spots_tiling():
    def tiled(q, k, v):
        times = q.shape[1] // k.shape[1]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat(1, times, 1, 1), v.repeat(1, times, 1, 1))

    def first_group_only(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k[:, :1], v[:, :1])

    assert_rejects("ch4.grouped_query", tiled, "query head i must use key/value head i // 2")
    assert_rejects("ch4.grouped_query", first_group_only, "not the right values")
