import pytest
import torch

import attnlib
from attnlib import exercises
from attnlib.exercises import ch8
from attnlib.linear_attention import linear_attention_step
from tests.exercise_cases import (
    assert_accepts,
    assert_hints_then_reveals,
    assert_refuses_the_library,
    assert_rejects,
    messages_in_a_row,
)


def phi(x):
    return torch.where(x > 0, x + 1, torch.exp(x))


def reference_linear_step(state, normaliser, q, k, v):
    """Written with einsum, the state updated in place of a copy."""
    state = state + torch.einsum("...i,...j->...ij", phi(k), v)
    normaliser = normaliser + phi(k)
    numerator = torch.einsum("...i,...ij->...j", phi(q), state)
    return numerator / torch.einsum("...i,...i->...", phi(q), normaliser)[..., None], \
        state, normaliser


def reference_scan_combine(first, second):
    a_earlier, u_earlier = first
    a_later, u_later = second
    return a_later * a_earlier, u_later + a_later * u_earlier


REFERENCES = {
    "ch8.linear_step": reference_linear_step,
    "ch8.scan_combine": reference_scan_combine,
    # no crosstalk needs orthogonal keys, and d dimensions hold d of them
    "ch8.recall_capacity": ch8.RECALL_CAPACITY_SETTING["d"],
}


# --- linear_step -------------------------------------------------------------------------


def outer(a, b):
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def read(fq, state, normaliser):
    return (fq.unsqueeze(-2) @ state).squeeze(-2) / (fq * normaliser).sum(-1, keepdim=True)


def without_normaliser(state, normaliser, q, k, v):
    state = state + outer(phi(k), v)
    return (phi(q).unsqueeze(-2) @ state).squeeze(-2), state, normaliser + phi(k)


def read_before_write(state, normaliser, q, k, v):
    out = read(phi(q), state, normaliser)
    return out, state + outer(phi(k), v), normaliser + phi(k)


def read_before_write_guarded(state, normaliser, q, k, v):
    out = torch.nan_to_num(read(phi(q), state, normaliser))
    return out, state + outer(phi(k), v), normaliser + phi(k)


def no_feature_on_k(state, normaliser, q, k, v):
    state, normaliser = state + outer(k, v), normaliser + k
    return read(phi(q), state, normaliser), state, normaliser


def no_feature_on_q(state, normaliser, q, k, v):
    state, normaliser = state + outer(phi(k), v), normaliser + phi(k)
    return read(q, state, normaliser), state, normaliser


def transposed_outer_product(state, normaliser, q, k, v):
    state = state.mT + outer(v, phi(k))  # d_v x d_k, read consistently
    normaliser = normaliser + phi(k)
    out = (state @ phi(q).unsqueeze(-1)).squeeze(-1) / (phi(q) * normaliser).sum(-1, keepdim=True)
    return out, state, normaliser


def relu_features(state, normaliser, q, k, v):
    def relu1(x):
        return torch.relu(x) + 1

    state, normaliser = state + outer(relu1(k), v), normaliser + relu1(k)
    return read(relu1(q), state, normaliser), state, normaliser


@pytest.mark.parametrize(("answer", "phrase"), [
    (without_normaliser, "without the normaliser: divide by phi(q)^T z'"),
    (read_before_write, "the output is not finite for the first token"),
    (read_before_write_guarded, "the output is 0 for the first token"),
    (no_feature_on_k, "apply the feature map to k before writing it"),
    (no_feature_on_q, "apply the feature map to q as well"),
    (transposed_outer_product, "the outer product is the wrong way round"),
    (relu_features, "S' for the first token"),
    (lambda s, z, q, k, v: reference_linear_step(s, z, q, k, v)[0], "return the triple"),
])
def test_linear_step_names_each_mistake(answer, phrase):
    assert_rejects("ch8.linear_step", answer, phrase)


def test_linear_step_names_read_before_write_on_a_later_token():
    def skip_first_token(state, normaliser, q, k, v):
        if not state.any():
            return reference_linear_step(state, normaliser, q, k, v)
        return read_before_write(state, normaliser, q, k, v)

    assert_rejects("ch8.linear_step", skip_first_token,
                   "for a later token, with S and z holding 5 earlier tokens: it reads the "
                   "state before writing the current token")


def test_linear_step_refuses_the_library_and_accepts_other_right_forms():
    assert_refuses_the_library("ch8.linear_step", linear_attention_step)

    def in_place(state, normaliser, q, k, v):
        state += torch.nn.functional.elu(k).add(1).unsqueeze(-1) @ v.unsqueeze(-2)
        normaliser += torch.nn.functional.elu(k) + 1
        fq = torch.nn.functional.elu(q) + 1
        denominator = (fq.unsqueeze(-2) @ normaliser.unsqueeze(-1)).squeeze(-1)
        return (fq.unsqueeze(-2) @ state).squeeze(-2) / denominator, state, normaliser

    assert_accepts("ch8.linear_step", in_place)


# --- scan_combine ------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "phrase"), [
    (lambda f, s: (f[0] * s[0], f[0] * s[1] + f[1]),
     "the steps are in the wrong order: `first` is the earlier step"),
    (lambda f, s: (f[0] * s[0], f[0] * f[1] + s[1]),
     "u1 must be decayed by the later step's a2; its own a1"),
    (lambda f, s: (f[0] * s[0], f[1] + s[1]), "decayed by the later step's a2 before adding"),
    (lambda f, s: (f[0] * s[0], s[0] * f[1]), "the later step adds its own input"),
    (lambda f, s: (f[0] + s[0], s[0] * f[1] + s[1]), "two decays in a row multiply"),
    (lambda f, s: (s[0], s[0] * f[1] + s[1]), "the combined decay is a2 * a1"),
    (lambda f, s: s[0] * f[1] + s[1], "return the pair (a, u)"),
    (lambda f, s: (f[0] * s[0], s[0] * f[1] + s[1] + 1e-3), "the combined u has the right "
     "shape but not the right values"),
])
def test_scan_combine_names_each_mistake(answer, phrase):
    assert_rejects("ch8.scan_combine", answer, phrase)


def test_scan_combine_catches_a_rule_that_breaks_inside_the_scan():
    def in_place(first, second):
        a, u = second
        a.mul_(first[0])  # right for one call, but it overwrites the scan's own tensors
        u.add_(a / first[0] * first[1])
        return a, u

    verdict = attnlib.check("ch8.scan_combine", in_place)
    assert not verdict


def test_scan_combine_accepts_a_rule_written_another_way():
    assert_accepts("ch8.scan_combine", lambda first, second: (
        second[0] * first[0], torch.addcmul(second[1], second[0], first[1])))


# --- recall_capacity: hint first, the answer only later ---------------------------------


@pytest.mark.parametrize(("answer", "phrase"), [
    (4096, "the state has d^2 = 4096 numbers"),
    (65, "count the keys that can all be at right angles to each other in 64 dimensions"),
    (128, "count the keys"),
    (8, "the question asks for the most"),
    (64.000001, "64.000001 pairs is not right"),
    ("sixty-four", "answer with one number of pairs"),
])
def test_recall_capacity_hints_without_giving_the_answer(answer, phrase):
    assert_hints_then_reveals("ch8.recall_capacity", answer, phrase,
                              "64, because at most d keys can be orthogonal in d dimensions")
    first = messages_in_a_row("ch8.recall_capacity", answer, tries=1)[0]
    assert "64" not in first.replace("64 dimensions", "").replace("64.000001", "")


def test_recall_capacity_uses_the_checkers_count_where_there_is_one(monkeypatch):
    monkeypatch.setattr(exercises, "attempts", lambda name: 5, raising=False)
    assert "the answer: 64" in attnlib.check("ch8.recall_capacity", 1).message


def test_recall_capacity_accepts_64_as_a_float():
    assert_accepts("ch8.recall_capacity", 64.0)


def test_recall_capacity_praise_gives_the_crosstalk_beyond():
    verdict = attnlib.check("ch8.recall_capacity", 64)
    assert verdict and "(1.00 at 128 pairs)" in verdict.message


def test_linear_step_names_plain_elu_and_explains_a_vector_only_outer_product():
    def plain_elu(state, normaliser, q, k, v):
        fq, fk = torch.nn.functional.elu(q), torch.nn.functional.elu(k)
        state = state + fk.unsqueeze(-1) * v.unsqueeze(-2)
        normaliser = normaliser + fk
        return (fq.unsqueeze(-1) * state).sum(-2) / (fq * normaliser).sum(-1, keepdim=True), \
            state, normaliser

    def with_outer(state, normaliser, q, k, v):
        fk = torch.nn.functional.elu(k) + 1
        return None, state + torch.outer(fk, v), normaliser + fk

    assert_rejects("ch8.linear_step", plain_elu, "the feature map is elu(x) + 1, not elu(x)")
    assert_rejects("ch8.linear_step", with_outer, "torch.outer takes two vectors")
