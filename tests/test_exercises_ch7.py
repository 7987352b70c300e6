import math

import pytest
import torch

import attnlib
from tests.exercise_cases import assert_accepts, assert_hints_then_reveals, assert_rejects


def reference_tflops(n, d, heads, batch, causal, backward, seconds, peak_tflops):
    """Written out: two N x N x d products of 2 FLOPs per multiply-add, per head and
    sequence; half of them with a causal mask; the backward 2.5 forwards more."""
    flops = 2 * 2 * n * n * d * heads * batch
    flops = flops / 2 if causal else flops
    flops = flops * 3.5 if backward else flops
    tflops = flops / seconds / 1e12
    return tflops, tflops / peak_tflops * 100


def largest_n(bytes_per_n, limit=16e9):
    n = 1
    while bytes_per_n(2 * n) <= limit:
        n *= 2
    return n


REFERENCES = {
    # naive: 16 heads x N^2 x 2 bytes; fused: q, k, v, o of 16 heads x N x 64 x 2 bytes
    "ch7.t4_fit": {"naive": largest_n(lambda n: 16 * n * n * 2),
                   "fused": largest_n(lambda n: 4 * 16 * n * 64 * 2)},
    "ch7.tflops": reference_tflops,
    # 2 bytes x (block_q x 128 + 2 stages x 32 keys x 256) <= 65536
    "ch7.t4_blocks": max(b for b in (16, 32, 64, 128, 256, 512)
                         if 2 * (b * 128 + 2 * 32 * 256) <= 65536),
}


def test_the_references_are_the_numbers_the_chapter_states():
    assert REFERENCES["ch7.t4_fit"] == {"naive": 16384, "fused": 1048576}
    assert REFERENCES["ch7.t4_blocks"] == 128


def test_t4_fit_hints_first_then_reveals():
    assert_hints_then_reveals("ch7.t4_fit", {"naive": 32768, "fused": 1048576},
                              "naive: 32,768 does not fit: it needs 34.4 GB",
                              "naive 16,384, fused 1,048,576")
    assert_rejects("ch7.t4_fit", {"naive": 16384, "fused": 16384},
                   "fused: 16,384 is not the largest N that fits: it never stores")
    assert_rejects("ch7.t4_fit", {"naive": 16384}, "missing 'fused'")
    assert_rejects("ch7.t4_fit", {"naive": 16384.5, "fused": 1}, "should be a whole number")
    assert_accepts("ch7.t4_fit", {"naive": 16384.0, "fused": 2**20})


@pytest.mark.parametrize(("mistake", "phrase"), [
    (lambda *a: (reference_tflops(*a)[0] * 1000, reference_tflops(*a)[1]), "that is GFLOP/s"),
    (lambda n, d, h, b, c, bw, s, p: reference_tflops(n, d, h, b, False, bw, s, p),
     "with a causal mask only half the pairs"),
    (lambda n, d, h, b, c, bw, s, p: reference_tflops(n, d, 1, 1, c, bw, s, p),
     "times batch x heads"),
    (lambda n, d, h, b, c, bw, s, p: reference_tflops(n, d, h, b, c, False, s, p),
     "forward and backward do 3.5 times"),
    (lambda n, d, h, b, c, bw, s, p: reference_tflops(n, d, h, b, c, bw, s * 1000, p),
     "dividing by milliseconds"),
    (lambda *a: (reference_tflops(*a)[0], reference_tflops(*a)[1] / 100), "as a fraction"),
    (lambda *a: (reference_tflops(*a)[0],), "return the two numbers"),
])
def test_tflops_names_the_mistake(mistake, phrase):
    assert_rejects("ch7.tflops", mistake, phrase)


def test_tflops_accepts_a_right_answer_written_with_the_library():
    from attnlib import cost

    def with_cost(n, d, heads, batch, causal, backward, seconds, peak):
        flops = cost.attention_flops(n, d, heads, batch, causal) * (3.5 if backward else 1)
        return torch.tensor(flops / seconds / 1e12), flops / seconds / 1e10 / peak

    assert_accepts("ch7.tflops", with_cost)
    assert math.isclose(reference_tflops(4096, 64, 16, 2, False, False, 0.0035, 989.5)[1],
                        100 * 4 * 4096**2 * 64 * 32 / 0.0035 / 1e12 / 989.5)


@pytest.mark.parametrize(("answer", "phrase"), [
    (256, "needs 98,304 bytes of shared memory"),
    (64, "fits (49,152 bytes), but a larger power of two does too"),
    (100, "need a power of two, at least 16"),
    (8, "need a power of two, at least 16"),
    ("big", "should be a number"),
])
def test_t4_blocks_names_the_mistake(answer, phrase):
    assert_rejects("ch7.t4_blocks", answer, phrase)


def test_t4_blocks_runs_the_kernel_with_the_answer():
    pytest.importorskip("triton")
    assert_accepts("ch7.t4_blocks", 128)


def test_t4_blocks_without_triton_judges_the_blocks_and_says_the_kernel_did_not_run(
        monkeypatch):
    from attnlib import triton_attention

    monkeypatch.setattr(triton_attention, "triton", None)
    verdict = attnlib.check("ch7.t4_blocks", 128)
    assert verdict and "Triton is not installed here" in verdict.message
