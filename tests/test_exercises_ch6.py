import math

import torch

from attnlib import flash
from attnlib.exercises.ch6 import CAUSAL_BLOCKS_SETTING
from tests.exercise_cases import (
    assert_accepts,
    assert_hints_then_reveals,
    assert_refuses_the_library,
    assert_rejects,
)


def reference_causal_blocks(N, block_q, block_k):
    """Brute force: a tile is computed when some query i in it sees some key j <= i."""
    computed = skipped = 0
    for q_start in range(0, N, block_q):
        for k_start in range(0, N, block_k):
            if any(j <= i for i in range(q_start, min(q_start + block_q, N))
                   for j in range(k_start, min(k_start + block_k, N))):
                computed += 1
            else:
                skipped += 1
    return {"computed": computed, "skipped": skipped}


def reference_normalised_update(m, ell, o, x, v):
    """Written from the definition: o' = (sum of the old terms + the new one) / ell'."""
    m_new = max(float(m), float(x))
    old_sum = math.exp(float(m) - m_new) * float(ell)
    new_term = math.exp(float(x) - m_new)
    ell_new = old_sum + new_term
    return (torch.tensor(m_new), torch.tensor(ell_new),
            (old_sum * o + new_term * v) / ell_new)


def reference_block_step(m, ell, acc, scores, v_block):
    """Row by row: a row that has seen no score keeps (-inf, 0, 0), as chapter 6 teaches."""
    m_new, ell_new, acc_new = m.clone(), ell.clone(), acc.clone()
    for b in range(scores.shape[0]):
        for r in range(scores.shape[1]):
            row_max = max(float(m[b, r]), float(scores[b, r].max()))
            if row_max == -math.inf:
                continue  # nothing visible yet: the state stays as it was
            weights = torch.exp(scores[b, r] - row_max)
            rescale = math.exp(float(m[b, r]) - row_max)
            m_new[b, r] = row_max
            ell_new[b, r] = rescale * ell[b, r] + weights.sum()
            acc_new[b, r] = rescale * acc[b, r] + weights @ v_block[b]
    return m_new, ell_new, acc_new


def notebook_block_step(m, ell, acc, scores, v_block):
    """Right wherever a row has seen a score; NaN for a row that sees nothing in its first
    block (exp(-inf - (-inf)))."""
    m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
    p = torch.exp(scores - m_new)
    rescale = torch.exp(m - m_new)
    return m_new, rescale * ell + p.sum(dim=-1, keepdim=True), rescale * acc + p @ v_block


def reference_merge(out1, lse1, out2, lse2):
    lse = torch.logaddexp(lse1, lse2)
    w1, w2 = torch.exp(lse1 - lse).unsqueeze(-1), torch.exp(lse2 - lse).unsqueeze(-1)
    return w1 * out1 + w2 * out2, lse


REFERENCES = {
    "ch6.causal_blocks": reference_causal_blocks(**CAUSAL_BLOCKS_SETTING),
    "ch6.normalised_update": reference_normalised_update,
    "ch6.block_step": reference_block_step,
    "ch6.merge": reference_merge,
}


def test_causal_blocks_feedback():
    right = REFERENCES["ch6.causal_blocks"]
    total = right["computed"] + right["skipped"]
    assert total == 8 * 16
    assert_accepts("ch6.causal_blocks", {key: float(n) for key, n in right.items()})
    assert_rejects("ch6.causal_blocks", {"computed": 36, "skipped": total - 36},
                   "the tiles are not square")
    assert_rejects("ch6.causal_blocks", {"computed": 60, "skipped": total - 60},
                   "60 computed is not right: query block r")
    assert_rejects("ch6.causal_blocks", dict(right, skipped=0), f"{total} tiles in all")
    assert_rejects("ch6.causal_blocks", {"computed": 500500, "skipped": 499500},
                   "count tiles, not scores")
    assert_rejects("ch6.causal_blocks", {"computed": 36.9, "skipped": 27.1},
                   "should be a whole number, got 36.9")
    assert_rejects("ch6.causal_blocks", 36, "answer with a dict")
    assert_rejects("ch6.causal_blocks", {"computed": "many", "skipped": 1}, "should be a number")


def test_causal_blocks_hints_first_and_gives_the_counts_after_two_wrong_tries():
    right = REFERENCES["ch6.causal_blocks"]
    total = right["computed"] + right["skipped"]
    assert_hints_then_reveals("ch6.causal_blocks", {"computed": 36, "skipped": total - 36},
                              "the tiles are not square",
                              f"{right['computed']} computed and {right['skipped']} skipped")


def test_normalised_update_feedback():
    def unnormalised(m, ell, o, x, v):  # FlashAttention-2's accumulator, never divided
        m_new = torch.maximum(m, x)
        c = torch.exp(m - m_new)
        return m_new, c * ell + torch.exp(x - m_new), c * o + torch.exp(x - m_new) * v

    def no_rescale(m, ell, o, x, v):
        m_new = torch.maximum(m, x)
        ell_new = ell + torch.exp(x - m_new)
        return m_new, ell_new, (ell * o + torch.exp(x - m_new) * v) / ell_new

    def sign_flipped(m, ell, o, x, v):
        m_new = torch.maximum(m, x)
        ell_new = torch.exp(m_new - m) * ell + torch.exp(x - m_new)
        return m_new, ell_new, o

    def old_maximum(m, ell, o, x, v):
        m_new = torch.maximum(m, x)
        return m_new, torch.exp(m - m_new) * ell + torch.exp(x - m), o

    def no_shift(m, ell, o, x, v):
        ell_new = ell + torch.exp(x)
        return torch.maximum(m, x), ell_new, (ell * o + torch.exp(x) * v) / ell_new

    def last_score_as_max(m, ell, o, x, v):
        return (x, *reference_normalised_update(m, ell, o, x, v)[1:])

    assert_rejects("ch6.normalised_update", unnormalised, "o after 2 key(s) of query 0")
    assert_rejects("ch6.normalised_update", unnormalised, "o is normalised")
    assert_rejects("ch6.normalised_update", no_rescale, "rescaled by exp(m - m')")
    for wrong in (sign_flipped, old_maximum):
        assert_rejects("ch6.normalised_update", wrong,
                       "exp(m - m') with m = -inf must give 0")
    assert_rejects("ch6.normalised_update", no_shift, "ell = exp(x - m') = 1")
    assert_rejects("ch6.normalised_update", last_score_as_max,
                   "m after 3 key(s) of query 0 has the right shape but not the right values")
    assert_rejects("ch6.normalised_update", last_score_as_max, "max(m, x)")
    assert_rejects("ch6.normalised_update", lambda m, ell, o, x, v: (m, ell),
                   "return the three values (m, ell, o)")


def test_normalised_update_overflow_names_the_large_scores():
    def unshifted_output(m, ell, o, x, v):  # right in exact arithmetic, exp(800) = inf
        m_new = torch.maximum(m, x)
        ell_new = torch.exp(m - m_new) * ell + torch.exp(x - m_new)
        return m_new, ell_new, (ell * torch.exp(m) * o + torch.exp(x) * v) / (
            ell_new * torch.exp(m_new))

    assert_rejects("ch6.normalised_update", unshifted_output, "of query 1")
    assert_rejects("ch6.normalised_update", unshifted_output,
                   "subtract the running maximum before taking exp")


def test_normalised_update_accepts_python_numbers_for_m_and_ell():
    def with_floats(m, ell, o, x, v):
        m_new = max(float(m), float(x))
        old, new = math.exp(float(m) - m_new) * float(ell), math.exp(float(x) - m_new)
        return m_new, old + new, (old * o + new * v) / (old + new)

    assert_accepts("ch6.normalised_update", with_floats)


def test_block_step_feedback():
    def acc_not_rescaled(m, ell, acc, scores, v_block):
        m_new, ell_new, _ = reference_block_step(m, ell, acc, scores, v_block)
        return m_new, ell_new, acc + torch.exp(scores - m_new) @ v_block

    def block_max_only(m, ell, acc, scores, v_block):  # consistent, but m is not the max
        m_new = scores.max(dim=-1, keepdim=True).values
        p, rescale = torch.exp(scores - m_new), torch.exp(m - m_new)
        return m_new, rescale * ell + p.sum(-1, keepdim=True), rescale * acc + p @ v_block

    def ignores_the_old_state(m, ell, acc, scores, v_block):
        p = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        return scores.max(dim=-1, keepdim=True).values, p.sum(-1, keepdim=True), p @ v_block

    assert_rejects("ch6.block_step", acc_not_rescaled, "acc is not rescaled, ell is")
    assert_rejects("ch6.block_step", block_max_only, "m must be max(m, rowmax(scores))")
    assert_rejects("ch6.block_step", ignores_the_old_state, "after a later block")
    assert_rejects("ch6.block_step", lambda *a: a[:2],
                   "return the three values (m, ell, acc), got a tuple of 2")


def learner_block_step(rescale="right", first_row_guard=True):
    """A learner's block step: `rescale` "right", "missing" or "inverted"; without
    `first_row_guard`, a row that sees nothing in its first block gets NaN."""
    def block_step(m, ell, acc, scores, v_block):
        m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
        shift = torch.where(m_new == -math.inf, 0.0, m_new) if first_row_guard else m_new
        p = torch.exp(scores - shift)
        factor = {"right": torch.exp(m - shift), "missing": torch.ones_like(m),
                  "inverted": torch.where(m == -math.inf, 0.0, torch.exp(shift - m))}[rescale]
        return m_new, factor * ell + p.sum(dim=-1, keepdim=True), factor * acc + p @ v_block
    return block_step


def test_block_step_names_a_missing_or_inverted_rescale_factor():
    assert_accepts("ch6.block_step", learner_block_step())
    assert_rejects("ch6.block_step", learner_block_step(rescale="missing"),
                   "neither ell nor acc is rescaled: when the maximum grows from m to m'")
    assert_rejects("ch6.block_step", learner_block_step(rescale="inverted"),
                   "your rescale factor is upside down: it is exp(m - m')")

    def inverted_unguarded(m, ell, acc, scores, v_block):
        m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
        p, rescale = torch.exp(scores - m_new), torch.exp(m_new - m)
        return m_new, rescale * ell + p.sum(dim=-1, keepdim=True), rescale * acc + p @ v_block

    assert_rejects("ch6.block_step", inverted_unguarded,
                   "on a first block the rescale factor exp(m - m') must be exp(-inf) = 0")


def test_block_step_needs_a_row_that_sees_nothing_to_stay_without_nan():
    """The edge case of the chapter: the library keeps (m, ell, acc) = (-inf, 0, 0) for a
    row whose scores are all -inf in its first block; the plain formula gives NaN."""
    m = torch.full((1, 1, 1), -math.inf, dtype=torch.float64)
    scores = torch.full((1, 1, 3), -math.inf, dtype=torch.float64)
    v = torch.ones(1, 3, 2, dtype=torch.float64)
    state = (m, torch.zeros_like(m), torch.zeros(1, 1, 2, dtype=torch.float64))
    assert notebook_block_step(*state, scores, v)[1].isnan().all()
    assert not flash.block_step(*(t.clone() for t in (*state, scores, v)))[1].isnan().any()
    assert_rejects("ch6.block_step", notebook_block_step,
                   "with the first block, query 1 of batch 0 seeing none of its keys (its "
                   "scores all -inf), your ell or acc has NaN: in the row that sees no key")
    assert_rejects("ch6.block_step", learner_block_step(first_row_guard=False),
                   "subtract 0 where m' = -inf")


def test_block_step_refuses_the_library():
    assert_refuses_the_library("ch6.block_step", flash.block_step)


def test_merge_feedback():
    def average(out1, lse1, out2, lse2):
        return (out1 + out2) / 2, torch.maximum(lse1, lse2)

    def unguarded_sum(out1, lse1, out2, lse2):
        lse = torch.log(torch.exp(lse1) + torch.exp(lse2))
        w1, w2 = torch.exp(lse1 - lse)[..., None], torch.exp(lse2 - lse)[..., None]
        return w1 * out1 + w2 * out2, lse

    def unguarded_weights(out1, lse1, out2, lse2):
        total = torch.exp(lse1) + torch.exp(lse2)
        lse = torch.logaddexp(lse1, lse2)
        return (torch.exp(lse1)[..., None] * out1 + torch.exp(lse2)[..., None] * out2) / total[
            ..., None], lse

    def unweighted(out1, lse1, out2, lse2):
        return out1 + out2, torch.logaddexp(lse1, lse2)

    assert_rejects("ch6.merge", average, "lse with the keys split 4 + 5")
    assert_rejects("ch6.merge", unguarded_sum,
                   "scores near 1000, batch dimensions (2, 3) overflowed to infinity")
    assert_rejects("ch6.merge", unguarded_weights, "weight each part by exp(lse_part - lse)")
    assert_rejects("ch6.merge", unguarded_weights, "scores near 1000")
    assert_rejects("ch6.merge", unweighted, "weight each part by exp(lse_part - lse)")
    assert_rejects("ch6.merge", lambda *a: a[0], "return the two values (out, lse)")
