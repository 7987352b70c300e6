import math

import pytest
import torch

from attnlib.exercises.ch2 import PREDICT_D_K
from tests.exercise_cases import assert_accepts, assert_rejects


def reference_softmax(x):
    shifted = x - x.max(dim=-1, keepdim=True).values
    return shifted.exp() / shifted.exp().sum(dim=-1, keepdim=True)


def reference_attention(q, k, v, mask=None):
    scores = torch.einsum("...id,...jd->...ij", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("...ij,...jd->...id", torch.softmax(scores, dim=-1), v)


def reference_logsumexp(x):
    m = x.max(dim=-1, keepdim=True).values
    return (m + (x - m).exp().sum(dim=-1, keepdim=True).log()).squeeze(-1)


REFERENCES = {
    # variances of d_k independent unit-variance products add up to d_k
    "ch2.predict_std": (math.sqrt(sum(1.0 for _ in range(PREDICT_D_K))), 1.0),
    "ch2.stable_softmax": reference_softmax,
    "ch2.attention": reference_attention,
    "ch2.logsumexp": reference_logsumexp,
}


@pytest.mark.parametrize("name", REFERENCES)
def test_reference_answers_pass(name):
    assert_accepts(name, REFERENCES[name])


def test_predict_std_feedback():
    assert_rejects("ch2.predict_std", (PREDICT_D_K, 1), "That is the variance")
    assert_rejects("ch2.predict_std", (16, 16), "gives 1, not 16")
    assert_rejects("ch2.predict_std", (3, 1), "variances of independent terms add")
    assert_rejects("ch2.predict_std", 16, "answer with two numbers")


def test_stable_softmax_feedback_names_the_overflow():
    def naive(x):
        return x.exp() / x.exp().sum(dim=-1, keepdim=True)

    assert_rejects("ch2.stable_softmax", naive, "subtract the row maximum first")
    wrong_dim = lambda x: torch.softmax(x, dim=0)  # noqa: E731  (right only for 1-D input)
    assert_rejects("ch2.stable_softmax", wrong_dim, "softmax of a (3, 4, 5) batch")


def test_attention_feedback_spots_a_missing_scale_and_an_inverted_mask():
    def unscaled(q, k, v, mask=None):
        return reference_attention(q * math.sqrt(q.shape[-1]), k, v, mask)

    def inverted(q, k, v, mask=None):
        return reference_attention(q, k, v, None if mask is None else ~mask)

    assert_rejects("ch2.attention", unscaled, "without the division by sqrt(d_k)")
    assert_rejects("ch2.attention", lambda q, k, v, mask=None: reference_attention(q, k, v),
                   "the output for a batch")
    assert_rejects("ch2.attention", inverted, "True means the query MAY attend")


def test_logsumexp_feedback():
    assert_rejects("ch2.logsumexp", lambda x: x.exp().sum(-1).log(), "with m the maximum")
    assert_rejects("ch2.logsumexp", lambda x: x.max(-1).values, "logsumexp of logits [1000, 1000]")
