import math

import torch

from attnlib import projections
from attnlib.exercises.ch1 import MONEY_SENTENCE, SHAPES_SETTING
from tests.exercise_cases import (
    assert_accepts,
    assert_hints_then_reveals,
    assert_refuses_the_library,
    assert_rejects,
)
from tests.reference import top_other_token


def reference_shapes(N, d_model, d_k, d_v):
    x = torch.randn(N, d_model)
    q, k, v = (x @ torch.randn(d_model, d) for d in (d_k, d_k, d_v))
    return {"Q": tuple(q.shape), "K": tuple(k.shape), "V": tuple(v.shape),
            "S": tuple(torch.einsum("ic,jc->ij", q, k).shape)}


def reference_qkv(x, w_q, w_k, w_v):
    return tuple(torch.einsum("...nd,de->...ne", x, w) for w in (w_q, w_k, w_v))


def reference_cross_scores(x_q, x_kv, w_q, w_k):
    return torch.einsum("ic,jc->ij", x_q @ w_q, x_kv @ w_k)


REFERENCES = {
    "ch1.shapes": reference_shapes(**SHAPES_SETTING),
    "ch1.bank_money": top_other_token(MONEY_SENTENCE)[0],
    "ch1.project_qkv": reference_qkv,
    "ch1.cross_scores": reference_cross_scores,
}


def test_shapes_feedback_names_the_wrong_shape_and_why():
    wrong = dict(REFERENCES["ch1.shapes"], S=(5, 3))
    assert_rejects("ch1.shapes", wrong, "S does not have shape (5, 3): S compares every query")
    assert_rejects("ch1.shapes", {"Q": (5, 3)}, "missing 'K', 'V', 'S'")
    assert_rejects("ch1.shapes", dict(wrong, V=(5, 3)), "gets a value of width d_v")


def test_shapes_hints_first_and_gives_the_shapes_after_two_wrong_tries():
    wrong = dict(REFERENCES["ch1.shapes"], S=(5, 3))
    assert_hints_then_reveals("ch1.shapes", wrong, "S does not have shape (5, 3)",
                              "Q (5, 3), K (5, 3), V (5, 4), S (5, 5)")


def test_bank_money_feedback():
    assert_rejects("ch1.bank_money", "deposited", "bank's score for 'deposited' is 0.60")
    assert_rejects("ch1.bank_money", "river", "is not one of the other words")
    assert_accepts("ch1.bank_money", "  Cash ")


def test_bank_money_hints_first_and_names_the_word_after_two_wrong_tries():
    assert_hints_then_reveals("ch1.bank_money", "deposited", "another word scores higher",
                              "'cash'")


def test_project_qkv_feedback():
    def swapped(x, w_q, w_k, w_v):
        q, k, v = reference_qkv(x, w_q, w_k, w_v)
        return k, q, v

    def unbatched(x, w_q, w_k, w_v):
        return x.reshape(-1, x.shape[-1]) @ w_q, x @ w_k, x @ w_v

    assert_rejects("ch1.project_qkv", swapped, "Q for the example sentence")
    assert_rejects("ch1.project_qkv", unbatched,
                   "should have shape (2, 3, 5, 4), but yours has shape (30, 4)")
    assert_rejects("ch1.project_qkv", lambda *a: a[0],
                   "return the three values (Q, K, V), got Tensor")


def test_project_qkv_names_bmm_on_a_batch_of_batches():
    def with_bmm(x, w_q, w_k, w_v):  # right for one sentence and for (B, N, d_model)
        flat = x if x.dim() == 3 else x.unsqueeze(0)
        out = [torch.bmm(flat, w.expand(flat.shape[0], *w.shape)) for w in (w_q, w_k, w_v)]
        return tuple(o if x.dim() == 3 else o.squeeze(0) for o in out)

    assert_rejects("ch1.project_qkv", with_bmm, "torch.bmm takes 3-D tensors only: use @")


def test_project_qkv_refuses_the_library_and_accepts_nn_linear():
    assert_refuses_the_library("ch1.project_qkv", projections.qkv)

    def with_linear(x, w_q, w_k, w_v):
        return tuple(torch.nn.functional.linear(x, w.T) for w in (w_q, w_k, w_v))

    assert_accepts("ch1.project_qkv", with_linear)


def test_cross_scores_feedback_spots_a_transpose():
    def transposed(x_q, x_kv, w_q, w_k):
        return reference_cross_scores(x_q, x_kv, w_q, w_k).T

    assert_rejects("ch1.cross_scores", transposed,
                   "should have shape (3, 5), but yours has shape (5, 3): it looks transposed")


def test_cross_scores_feedback_spots_a_scale_and_accepts_a_loop():
    def scaled(x_q, x_kv, w_q, w_k):
        return reference_cross_scores(x_q, x_kv, w_q, w_k) / math.sqrt(w_q.shape[1])

    def loop(x_q, x_kv, w_q, w_k):
        q, k = x_q @ w_q, x_kv @ w_k
        return torch.tensor([[float(q_i @ k_j) for k_j in k] for q_i in q])

    assert_rejects("ch1.cross_scores", scaled, "the exercise asks for the raw scores")
    assert_accepts("ch1.cross_scores", loop)
