import math

import torch

from attnlib.exercises.ch2 import PREDICT_D_K
from tests.exercise_cases import assert_rejects


def reference_softmax(x):
    shifted = x - x.max(dim=-1, keepdim=True).values
    return shifted.exp() / shifted.exp().sum(dim=-1, keepdim=True)


def reference_attention(q, k, v, scale=None, dim=-1):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("...id,...jd->...ij", q, k) * scale
    return torch.einsum("...ij,...jd->...id", torch.softmax(scores, dim=dim), v)


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



def test_predict_std_feedback():
    assert_rejects("ch2.predict_std", (PREDICT_D_K, 1), "That is the variance")
    assert_rejects("ch2.predict_std", (16, 16), "gives 1, not 16")
    assert_rejects("ch2.predict_std", (3, 1), "variances of independent terms add")
    assert_rejects("ch2.predict_std", 16, "answer with two numbers")


def test_stable_softmax_feedback_names_the_overflow_and_the_dimension():
    def naive(x):
        return x.exp() / x.exp().sum(dim=-1, keepdim=True)

    def whole_tensor(x):
        exps = (x - x.max()).exp()
        return exps / exps.sum()

    assert_rejects("ch2.stable_softmax", naive, "subtract the row maximum first")
    assert_rejects("ch2.stable_softmax", whole_tensor, "normalise over the last dimension")


def test_attention_feedback_names_the_usual_mistakes():
    def transposed_with_T(q, k, v):
        k_t = k.permute(*range(k.dim() - 1, -1, -1))  # what k.T does: reverse every dimension
        return torch.softmax(q @ k_t / math.sqrt(q.shape[-1]), dim=-1) @ v

    cases = [
        (lambda q, k, v: reference_attention(q, k, v, scale=1.0), "without the division by sqrt"),
        (lambda q, k, v: reference_attention(q, k, v, scale=1 / q.shape[-1]), "by sqrt(d_k)"),
        (lambda q, k, v: reference_attention(q, k, v, dim=-2), "softmax over the queries"),
        (transposed_with_T, "k.T reverses all of them"),
        (lambda q, k, v: reference_attention(q, k, v) + 1, "the output for q, k, v of shape"),
    ]
    for answer, phrase in cases:
        assert_rejects("ch2.attention", answer, phrase)


def test_logsumexp_feedback():
    def keepdim(x):
        return reference_logsumexp(x).unsqueeze(-1)

    def without_m(x):
        m = x.max(dim=-1, keepdim=True).values
        return (x - m).exp().sum(-1).log()

    def global_max(x):
        m = x.max()
        return m + (x - m).exp().sum(-1).log()

    assert_rejects("ch2.logsumexp", lambda x: x.exp().sum(-1).log(), "maximum of each row")
    assert_rejects("ch2.logsumexp", keepdim, "drop the last dimension")
    assert_rejects("ch2.logsumexp", without_m, "did you add m back?")
    assert_rejects("ch2.logsumexp", global_max, "maximum of each row")
