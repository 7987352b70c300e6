import math

import pytest
import torch

from attnlib.exercises.ch6 import CAUSAL_BLOCKS_SETTING
from tests.exercise_cases import assert_accepts, assert_rejects


def reference_causal_blocks(N, block):
    """Brute force: a tile is computed when some query i in it sees some key j <= i."""
    tiles = math.ceil(N / block)
    computed = sum(any(j <= i for i in range(qb * block, min((qb + 1) * block, N))
                       for j in range(kb * block, min((kb + 1) * block, N)))
                   for qb in range(tiles) for kb in range(tiles))
    return {"computed": computed, "skipped": tiles * tiles - computed}


def reference_online_update(m, ell, x):
    m_new = torch.maximum(m, x)
    return m_new, ell * torch.exp(m - m_new) + torch.exp(x - m_new)


def reference_block_step(m, ell, acc, scores, v_block):
    m_new = torch.maximum(m, scores.max(dim=-1, keepdim=True).values)
    p = torch.exp(scores - m_new)
    rescale = torch.exp(m - m_new)
    return m_new, rescale * ell + p.sum(dim=-1, keepdim=True), rescale * acc + p @ v_block


def reference_merge(out1, lse1, out2, lse2):
    lse = torch.logaddexp(lse1, lse2)
    w1, w2 = torch.exp(lse1 - lse).unsqueeze(-1), torch.exp(lse2 - lse).unsqueeze(-1)
    return w1 * out1 + w2 * out2, lse


REFERENCES = {
    "ch6.causal_blocks": reference_causal_blocks(**CAUSAL_BLOCKS_SETTING),
    "ch6.online_update": reference_online_update,
    "ch6.block_step": reference_block_step,
    "ch6.merge": reference_merge,
}


@pytest.mark.parametrize("name", REFERENCES)
def test_reference_answers_pass(name):
    assert_accepts(name, REFERENCES[name])


def test_causal_blocks_feedback():
    right = REFERENCES["ch6.causal_blocks"]
    assert_rejects("ch6.causal_blocks", {"computed": 32, "skipped": 32},
                   "32 computed is not right: query block i sees the key blocks 0 to i")
    assert_rejects("ch6.causal_blocks", dict(right, skipped=0), "64 tiles in all")
    assert_rejects("ch6.causal_blocks", 36, "answer with a dict")
    assert_rejects("ch6.causal_blocks", {"computed": "many", "skipped": 1}, "whole numbers")


def test_online_update_feedback():
    def no_rescale(m, ell, x):
        m_new = torch.maximum(m, x)
        return m_new, ell + torch.exp(x - m_new)

    def no_max(m, ell, x):
        return torch.maximum(m, x), ell + torch.exp(x)

    def last_score_as_max(m, ell, x):
        return x, reference_online_update(m, ell, x)[1]

    assert_rejects("ch6.online_update", no_rescale,
                   "ell after 2 score(s) has the right shape but not the right values")
    assert_rejects("ch6.online_update", no_rescale, "rescaled by exp(m_old - m_new)")
    assert_rejects("ch6.online_update", no_max, "ell overflowed")
    assert_rejects("ch6.online_update", lambda m, ell, x: (x, ell), "ell = exp(x - m) = 1")
    assert_rejects("ch6.online_update", last_score_as_max,
                   "m after 3 score(s) (the running maximum)")
    assert_rejects("ch6.online_update", lambda m, ell, x: m, "return the pair (m, ell)")


def test_block_step_feedback():
    def acc_not_rescaled(m, ell, acc, scores, v_block):
        m_new, ell_new, _ = reference_block_step(m, ell, acc, scores, v_block)
        return m_new, ell_new, acc + torch.exp(scores - m_new) @ v_block

    def ignores_the_old_state(m, ell, acc, scores, v_block):
        p = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        return scores.max(dim=-1, keepdim=True).values, p.sum(-1, keepdim=True), p @ v_block

    assert_rejects("ch6.block_step", acc_not_rescaled, "acc after a later block")
    assert_rejects("ch6.block_step", ignores_the_old_state, "after a later block")
    assert_rejects("ch6.block_step", lambda *a: a[:2], "return the triple (m, ell, acc)")


def test_merge_feedback():
    def average(out1, lse1, out2, lse2):
        return (out1 + out2) / 2, torch.maximum(lse1, lse2)

    def unguarded_sum(out1, lse1, out2, lse2):
        lse = torch.log(torch.exp(lse1) + torch.exp(lse2))
        w1, w2 = torch.exp(lse1 - lse)[..., None], torch.exp(lse2 - lse)[..., None]
        return w1 * out1 + w2 * out2, lse

    assert_rejects("ch6.merge", average, "lse with the keys split 4 + 5")
    assert_accepts("ch6.merge", unguarded_sum)  # small scores: no overflow, and correct
    assert_rejects("ch6.merge", lambda *a: a[0], "return the pair (out, lse)")
