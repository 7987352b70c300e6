"""Checks for chapter 1: Q/K/V projections."""

import math

import torch

from attnlib import projections
from attnlib.exercises import (
    Wrong,
    bmm_hint,
    call,
    exercise,
    matches,
    refuse_library,
    require_keys,
    require_parts,
    same_tensor,
    shape_text,
    wrong_prediction,
)

#: The setting of the shape-prediction exercise.
SHAPES_SETTING = {"N": 5, "d_model": 8, "d_k": 3, "d_v": 4}

_SHAPE_HINTS = {
    "Q": "each of the N tokens gets a query of width d_k",
    "K": "each of the N tokens gets a key of width d_k",
    "V": "each of the N tokens gets a value of width d_v",
    "S": "S compares every query with every key, so it is N x N whatever d_k is",
}


def expected_shapes(N, d_model, d_k, d_v):
    x = torch.zeros(N, d_model)
    w_q, w_k, w_v = (torch.zeros(d_model, d) for d in (d_k, d_k, d_v))
    q, k, v = projections.qkv(x, w_q, w_k, w_v)
    return {"Q": tuple(q.shape), "K": tuple(k.shape), "V": tuple(v.shape),
            "S": tuple((q @ k.mT).shape)}


@exercise("ch1.shapes")
def check_shapes(answer):
    expected = expected_shapes(**SHAPES_SETTING)
    require_keys(answer, list(expected), "{'Q': (5, 3), ...}")
    for key, shape in expected.items():
        try:
            got = tuple(int(s) for s in answer[key])
        except (TypeError, ValueError):
            raise Wrong(f"{key} should be a tuple of ints, got {answer[key]!r}.") from None
        if got != shape:
            wrong_prediction("ch1.shapes", f"{key} does not have shape {shape_text(got)}: "
                             f"{_SHAPE_HINTS[key]}",
                             ", ".join(f"{k} {shape_text(s)}" for k, s in expected.items()))
    return "Q and K share the width d_k so that they can be compared, and S is N x N."


#: The sentence of the prediction exercise about the money sense of "bank".
MONEY_SENTENCE = "she deposited cash at the bank"


@exercise("ch1.bank_money")
def check_bank_money(answer):
    tokens, x = projections.embed(MONEY_SENTENCE)
    q, k, _ = projections.qkv(x, *projections.hand_built_projections())
    row = (q @ k.mT)[tokens.index("bank")]
    scores = {t: float(row[j]) for j, t in enumerate(tokens) if t != "bank"}
    best = max(scores, key=scores.get)
    if not isinstance(answer, str):
        raise Wrong(f"answer with one word of the sentence as a str, got {type(answer).__name__}.")
    word = answer.strip().lower()
    if word not in scores:
        raise Wrong(f"{answer!r} is not one of the other words of {MONEY_SENTENCE!r}.")
    if word != best:
        wrong_prediction("ch1.bank_money",
                         f"bank's score for {word!r} is {scores[word]:.2f}, but another word "
                         "scores higher: look at which words have a non-zero 'water' or "
                         "'money' feature",
                         f"{best!r}, whose key answers bank's query with {scores[best]:.2f}, "
                         "its amount of money")
    return f"{best!r} carries the most 'money', and bank's query asks for the topic around it."


def _batch_hint(error):
    return bmm_hint(error) or "Use @, which handles leading batch dimensions."


@exercise("ch1.project_qkv")
def check_project_qkv(my_qkv):
    refuse_library(my_qkv, (projections.qkv, projections.project), "with @")
    tokens, x = projections.embed(projections.EXAMPLE_SENTENCE)
    cases = [("the example sentence and the hand-built W_Q, W_K, W_V",
              x, projections.hand_built_projections())]
    gen = torch.Generator().manual_seed(1)
    x_batch = torch.randn(2, 3, 5, 8, generator=gen)
    cases.append(("a batch x of shape (2, 3, 5, 8), d_k = 4, d_v = 6", x_batch,
                  projections.random_projections(8, 4, 6, seed=1)))
    for description, x_case, weights in cases:
        got = require_parts(call(my_qkv, x_case, *weights, called_with=description,
                                 hint=_batch_hint if x_case.dim() > 2 else None), "QKV")
        for what, g, e in zip("QKV", got, projections.qkv(x_case, *weights), strict=True):
            same_tensor(g, e, f"{what} for {description}")
    return "one matrix product per projection, and it works for any leading batch dimensions."


@exercise("ch1.cross_scores")
def check_cross_scores(cross_scores):
    gen = torch.Generator().manual_seed(2)
    x_q, x_kv = torch.randn(3, 6, generator=gen), torch.randn(5, 6, generator=gen)
    w_q, w_k, _ = projections.random_projections(6, 4, seed=2)
    expected = (x_q @ w_q) @ (x_kv @ w_k).mT
    got = call(cross_scores, x_q, x_kv, w_q, w_k,
               called_with="x_q of shape (3, 6), x_kv of shape (5, 6), d_k = 4")
    if matches(got, expected / math.sqrt(4)):
        raise Wrong("your scores are divided by sqrt(d_k): the exercise asks for the raw "
                    "scores, (x_q W_Q)(x_kv W_K)^T; chapter 2 adds the scale.")
    same_tensor(got, expected, "the score table for 3 queries and 5 keys")
    return "one row per query, one column per key: (3, 5) here, no longer square."
