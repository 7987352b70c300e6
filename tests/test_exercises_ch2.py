import math

import pytest
import torch

from attnlib import attention
from attnlib.exercises.ch2 import PREDICT_D_K
from tests.exercise_cases import (
    assert_accepts,
    assert_hints_then_reveals,
    assert_refuses_the_library,
    assert_rejects,
)


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


@pytest.mark.parametrize(("wrong", "phrase"), [
    ((PREDICT_D_K, 1), "256 is the variance of q . k, not its standard deviation"),
    ((1, 1), "that is the std of one product q_i k_i"),
    ((3, 1), "variances of independent terms add"),
    ((16, 16), "dividing every score by sqrt(d_k) divides their std by sqrt(d_k) too"),
    ((16, 16 / 256), "is the std divided by d_k"),
])
def test_predict_std_hints_without_the_answer_then_reveals_it(wrong, phrase):
    assert_hints_then_reveals("ch2.predict_std", wrong, phrase, "(16, 1)")


def test_predict_std_form():
    assert_rejects("ch2.predict_std", 16, "answer with two numbers")
    assert_rejects("ch2.predict_std", (16, 1, 0), "answer with two numbers")
    assert_rejects("ch2.predict_std", (math.nan, 1), "the std of q . k is NaN, not a number")
    assert_accepts("ch2.predict_std", [16.2, torch.tensor(0.99)])


def test_stable_softmax_feedback_names_the_overflow_and_the_dimension():
    def naive(x):
        return x.exp() / x.exp().sum(dim=-1, keepdim=True)

    def whole_tensor(x):
        exps = (x - x.max()).exp()
        return exps / exps.sum()

    assert_rejects("ch2.stable_softmax", naive, "subtract the row maximum first")
    assert_rejects("ch2.stable_softmax", whole_tensor, "normalise over the last dimension")


def test_stable_softmax_accepts_right_answers_within_float32s_own_error():
    """exp(x - logsumexp(x)) is off by 3e-5 at logits of 1000 in float32, as float32 must be:
    x - lse rounds to a unit in the last place of 1000, 6e-5."""
    def through_logsumexp(x):
        m = x.max(dim=-1, keepdim=True).values
        lse = m + (x - m).exp().sum(dim=-1, keepdim=True).log()
        return (x - lse).exp()

    x = torch.tensor([1000.0, 999.0, -1000.0])
    error = (through_logsumexp(x).double() - torch.softmax(x.double(), dim=-1)).abs().max()
    assert error > 1e-5  # what a tolerance of 1e-5 refused
    assert_accepts("ch2.stable_softmax", through_logsumexp)
    assert_accepts("ch2.stable_softmax", lambda x: torch.log_softmax(x, dim=-1).exp())


def test_stable_softmax_names_a_sum_that_is_almost_one_with_its_digits():
    def short_by_3e_4(x):
        return reference_softmax(x) * (1 - 3e-4)

    assert_rejects("ch2.stable_softmax", short_by_3e_4, "sum to 0.9997, not 1")


def test_stable_softmax_refuses_pytorchs_and_the_librarys():
    assert_refuses_the_library("ch2.stable_softmax", torch.softmax, dim=-1)
    assert_refuses_the_library("ch2.stable_softmax", attention.softmax)
    assert_rejects("ch2.stable_softmax", lambda x: torch.nn.functional.softmax(x, -1),
                   "your function calls PyTorch's own softmax")


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


def test_attention_names_the_scale_by_sqrt_d_v():
    def by_d_v(q, k, v):
        return reference_attention(q, k, v, scale=1 / math.sqrt(v.shape[-1]))

    assert_rejects("ch2.attention", by_d_v,
                   "divides the scores by sqrt(d_v) = sqrt(3), the width of the values")


def test_attention_with_bmm_fails_on_two_batch_dimensions_and_says_why():
    def with_bmm(q, k, v):  # right for (N, d) and (B, N, d)
        if q.dim() == 2:
            return with_bmm(q[None], k[None], v[None])[0]
        weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1]), -1)
        return torch.bmm(weights, v)

    assert_rejects("ch2.attention", with_bmm,
                   "when called with two batch dimensions: q (2, 3, 5, 6), k (2, 3, 4, 6), "
                   "v (2, 3, 4, 2). torch.bmm takes 3-D tensors only")

    def transposed_1_2(q, k, v):  # right for (N, d) and (B, N, d) only
        k_t = k.T if k.dim() == 2 else k.transpose(1, 2)
        return torch.softmax(q @ k_t / math.sqrt(q.shape[-1]), dim=-1) @ v

    assert_rejects("ch2.attention", transposed_1_2,
                   "and transpose(1, 2) swaps others when there are two batch dimensions")


def test_attention_refuses_the_attention_functions():
    assert_refuses_the_library("ch2.attention", torch.nn.functional.scaled_dot_product_attention)
    assert_refuses_the_library("ch2.attention", attention.scaled_dot_product_attention)


def test_attention_accepts_a_loop_over_the_batch():
    def per_matrix(q, k, v):
        flat_q, flat_k, flat_v = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
        rows = [torch.softmax(a @ b.T / math.sqrt(a.shape[-1]), dim=-1) @ c
                for a, b, c in zip(flat_q, flat_k, flat_v, strict=True)]
        return torch.stack(rows).reshape(*q.shape[:-1], v.shape[-1])

    assert_accepts("ch2.attention", per_matrix)


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


def test_logsumexp_prints_enough_digits_to_tell_the_numbers_apart():
    def without_log_two(x):  # ln(e^1000 + e^1000) = 1000.69, not 1000
        return x.max(dim=-1).values

    assert_rejects("ch2.logsumexp", without_log_two, "expected 1000.69, got 1000")


def test_logsumexp_refuses_pytorchs_and_accepts_one_through_logaddexp():
    assert_refuses_the_library("ch2.logsumexp", torch.logsumexp, dim=-1)

    def folded(x):
        total = x[..., 0]
        for j in range(1, x.shape[-1]):
            total = torch.logaddexp(total, x[..., j])
        return total

    assert_accepts("ch2.logsumexp", folded)
