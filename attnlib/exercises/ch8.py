"""Checks for chapter 8: beyond the quadratic cost."""

import math
import numbers

import torch

from attnlib import recall, ssm
from attnlib.exercises import (
    Wrong,
    call,
    exercise,
    number_text,
    refuse_library,
    same_tensor,
    shape_text,
    wrong_prediction,
)
from attnlib.linear_attention import elu_feature_map, linear_attention_step

# --- where recall breaks: a prediction ---------------------------------------------------

#: The setting of the capacity prediction: a d x d state (linear attention, or the scan
#: with d_state = d), keys chosen as well as possible.
RECALL_CAPACITY_SETTING = {"d": 64}


def _capacity_hint(answer, d):
    if answer == d * d:
        return (f"the state has d^2 = {d * d} numbers, but every pair writes an outer product "
                "k v^T that touches all of them, and reading with k_j brings back every "
                "other pair i in proportion to k_i . k_j; think in d, not d^2")
    if answer > d:
        return ("reading with k_j returns v_j plus (k_i . k_j) v_i for every other pair i: "
                "no crosstalk means every one of those dot products is 0, so count the keys "
                f"that can all be at right angles to each other in {d} dimensions")
    return ("with fewer pairs it works too, but the question asks for the most: add pairs "
            "until two keys can no longer be at right angles")


@exercise("ch8.recall_capacity")
def check_recall_capacity(answer):
    d = RECALL_CAPACITY_SETTING["d"]
    if (isinstance(answer, bool) or not isinstance(answer, numbers.Real)
            or not math.isfinite(answer)):
        message = f"answer with one number of pairs, got {answer!r}"
    elif answer == d:
        return (f"{d} = d: orthogonal keys, one per dimension, come back clean; a {d + 1}th "
                "key overlaps the others, and the crosstalk is then at least sqrt(pairs/d - 1) "
                f"({recall.predicted_crosstalk(2 * d, d, 'orthogonal'):.2f} at {2 * d} pairs), "
                "while random keys overlap from the second pair on (sqrt((pairs - 1)/d) = "
                f"{recall.predicted_crosstalk(d, d):.2f} at {d} pairs).")
    else:
        message = f"{number_text(answer)} pairs is not right: {_capacity_hint(answer, d)}"
    wrong_prediction("ch8.recall_capacity", message,
                     f"{d}, because at most d keys can be orthogonal in d dimensions")


# --- one recurrent step of causal linear attention ---------------------------------------


def _step_cases():
    """(description, S, z, q, k, v): batch dims (2, 3), d_k = 4, d_v = 3, float64."""
    gen = torch.Generator().manual_seed(8)

    def randn(*shape):
        return torch.randn(2, 3, *shape, generator=gen, dtype=torch.float64)

    earlier_k, earlier_v = randn(5, 4), randn(5, 3)
    features = elu_feature_map(earlier_k)
    state, normaliser = features.mT @ earlier_v, features.sum(dim=-2)
    zeros = (torch.zeros_like(state), torch.zeros_like(normaliser))
    return [("the first token (S = 0, z = 0), batch dimensions (2, 3), d_k = 4, d_v = 3",
             *zeros, randn(4), randn(4), randn(3)),
            ("a later token, with S and z holding 5 earlier tokens", state, normaliser,
             randn(4), randn(4), randn(3))]


def _read(features_q, state, normaliser):
    numerator = (features_q.unsqueeze(-2) @ state).squeeze(-2)
    return numerator / (features_q * normaliser).sum(dim=-1, keepdim=True)


def _output_mistakes(state, normaliser, q, k, v):
    """Outputs of the usual wrong steps, each with the sentence that names the mistake."""
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    new_state, new_normaliser = state + fk.unsqueeze(-1) @ v.unsqueeze(-2), normaliser + fk
    return [
        ((fq.unsqueeze(-2) @ new_state).squeeze(-2),
         "it is phi(q)^T S' without the normaliser: divide by phi(q)^T z'"),
        (_read(fq, state, normaliser),
         "it reads the state before writing the current token: write phi(k) v^T into S "
         "first, then read, so that the token sees itself"),
        (_read(q, new_state, new_normaliser), "apply the feature map to q as well: phi(q)"),
        ((fq.unsqueeze(-2) @ new_state).squeeze(-2) / new_normaliser.sum(dim=-1, keepdim=True),
         "the normaliser is phi(q)^T z', not the sum of z'"),
    ]


def _is(got, candidate):
    return (isinstance(got, torch.Tensor) and got.shape == candidate.shape
            and bool(torch.isclose(got.double(), candidate, rtol=1e-5, atol=1e-6,
                                   equal_nan=True).all()))


def _outer_hint(error):
    if "outer" in str(error) or "Expected 1-D" in str(error):
        return ("torch.outer takes two vectors; with batch dimensions write the outer product "
                "as phi_k.unsqueeze(-1) * v.unsqueeze(-2).")
    return None


@exercise("ch8.linear_step")
def check_linear_step(my_step):
    refuse_library(my_step, (linear_attention_step,), "with elu(x) + 1, an outer product and "
                   "two sums")
    for description, state, normaliser, q, k, v in _step_cases():
        got = call(my_step, *(t.clone() for t in (state, normaliser, q, k, v)),
                   called_with=description, hint=_outer_hint)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise Wrong(f"return the triple (out, S, z), got {type(got).__name__}.")
        out, new_state, new_normaliser = got
        expected = linear_attention_step(state, normaliser, q, k, v)
        where = f"for {description}"
        if isinstance(new_state, torch.Tensor) and new_state.shape == expected[1].mT.shape \
                and new_state.shape != expected[1].shape:
            raise Wrong(f"S' has shape {shape_text(new_state.shape)} {where}: the outer product "
                        "is the wrong way round; S adds up phi(k) v^T, a d_k x d_v matrix "
                        "(d_k = 4 rows, d_v = 3 columns).")
        if _is(new_state, state + k.unsqueeze(-1) @ v.unsqueeze(-2)):
            raise Wrong(f"S' is not right {where}: apply the feature map to k before writing "
                        "it, S' = S + phi(k) v^T.")
        plain_elu = torch.nn.functional.elu(k)
        if _is(new_state, state + plain_elu.unsqueeze(-1) @ v.unsqueeze(-2)):
            raise Wrong(f"S' is not right {where}: the feature map is elu(x) + 1, not elu(x), "
                        "so that every feature is positive.")
        same_tensor(new_state, expected[1], f"S' {where}")
        if _is(new_normaliser, normaliser + k):
            raise Wrong(f"z' is not right {where}: it adds k; add phi(k).")
        same_tensor(new_normaliser, expected[2], f"z' {where}")
        if isinstance(out, torch.Tensor) and out.shape == expected[0].shape \
                and (not torch.isfinite(out).all() or not out.any()):
            raise Wrong(f"the output is {'0' if torch.isfinite(out).all() else 'not finite'} "
                        f"{where}: read before writing, the first token finds S = 0 and z = 0; "
                        "write phi(k) v^T and phi(k) first, then read, so that the token sees "
                        "itself.")
        if not _is(out, expected[0]):
            hint = next((hint for wrong, hint in _output_mistakes(state, normaliser, q, k, v)
                         if _is(out, wrong)), None)
            if hint:
                raise Wrong(f"the output is not right {where}: {hint}.")
        same_tensor(out, expected[0], f"the output {where}")
    return ("write phi(k) v^T and phi(k), then read phi(q)^T S / phi(q)^T z: 4 d_k d_v "
            "FLOPs and a d_k x d_v state per token, however long the text.")


# --- the combine rule of the scan --------------------------------------------------------


def _combine_mistakes(a1, u1, a2, u2):
    return [
        ((a1 * a2, a1 * u2 + u1),
         "the steps are in the wrong order: `first` is the earlier step, so its u1 is decayed "
         "by the later step's a2 (a2 * u1 + u2), not the other way round"),
        ((a1 * a2, a1 * u1 + u2),
         "u1 must be decayed by the later step's a2; its own a1 acted before u1 was added"),
        ((a1 * a2, u1 + u2), "u1 must be decayed by the later step's a2 before adding u2"),
        ((a1 * a2, a2 * u1), "the later step adds its own input: a2 * u1 + u2"),
        ((a1 + a2, a2 * u1 + u2), "two decays in a row multiply: a2 * a1, not a1 + a2"),
        ((a2, a2 * u1 + u2), "the combined decay is a2 * a1: both steps decay the state"),
    ]


@exercise("ch8.scan_combine")
def check_scan_combine(my_combine):
    gen = torch.Generator().manual_seed(8)
    a1, a2 = (torch.rand(2, 5, generator=gen, dtype=torch.float64) + 0.1 for _ in range(2))
    u1, u2 = (torch.randn(2, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    described = "first = (a1, u1) and second = (a2, u2), tensors of shape (2, 5)"
    got = call(my_combine, (a1.clone(), u1.clone()), (a2.clone(), u2.clone()),
               called_with=described)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Wrong(f"return the pair (a, u) of the combined step, got {type(got).__name__}.")
    expected = ssm.scan_combine((a1, u1), (a2, u2))
    if not all(_is(g, e) for g, e in zip(got, expected, strict=True)):
        hint = next((hint for wrong, hint in _combine_mistakes(a1, u1, a2, u2)
                     if all(_is(g, w) for g, w in zip(got, wrong, strict=True))), None)
        if hint:
            raise Wrong(f"with {described}: {hint}.")
        same_tensor(got[0], expected[0], "the combined a")
        same_tensor(got[1], expected[1], "the combined u")
    a = torch.rand(3, 11, 4, generator=gen, dtype=torch.float64)
    u = torch.randn(3, 11, 4, generator=gen, dtype=torch.float64)
    try:
        scanned = ssm.parallel_scan(a.clone(), u.clone(), combine=my_combine)
    except Exception as error:
        raise Wrong(f"your combine works on one pair of steps but raised "
                    f"{type(error).__name__} ({error}) inside the parallel scan.") from None
    same_tensor(scanned, ssm.sequential_scan(a, u),
                "the states h of the parallel scan with your combine (N = 11)")
    return ("(a2 a1, a2 u1 + u2) is associative but not commutative: the scan may regroup "
            "the steps, in log2(N) rounds, but never reorder them.")
