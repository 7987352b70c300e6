"""Chapter 8's sparse attention: a sliding window plus global tokens, as a mask and block
by block, and its costs."""

import itertools
import math
import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from attnlib import cost, sparse
from tests.reference import attention64, randn

CASES = [  # n, window, global positions
    (1, 1, [0]), (7, 3, []), (10, 3, [0, 7]), (13, 4, [12, 0, 1, 1]), (5, 8, [2]),
    (16, 4, [5, 6]), (9, 1, []), (9, 1, [4]), (12, 12, [11]),
]


def reference_mask(n, window, globals_, causal):
    """Longformer's rule, entry by entry: the band |i - j| < window, or i or j global;
    causal: only j <= i of that."""
    return torch.tensor([[(abs(i - j) < window or i in globals_ or j in globals_)
                          and (j <= i or not causal) for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "window", "globals_"), CASES)
def test_the_mask_follows_the_rule(n, window, globals_, causal):
    mask = sparse.window_global_mask(n, window, globals_, is_causal=causal)
    assert torch.equal(mask, reference_mask(n, window, set(globals_), causal))


def test_the_causal_mask_without_globals_is_chapter_5s_band():
    from attnlib.masking import sliding_window_mask

    assert torch.equal(sparse.window_global_mask(11, 4, is_causal=True),
                       sliding_window_mask(11, 4))
    assert torch.equal(sparse.window_global_mask(6, 2, torch.tensor([3, 1])),
                       reference_mask(6, 2, {1, 3}, causal=False))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "window", "globals_"), CASES)
def test_blocked_attention_equals_masked_attention_in_float64(n, window, globals_, causal):
    seed = n * 100 + window
    q = randn(2, 3, n, 5, seed=seed)
    k = randn(1, n, 5, seed=seed + 1)  # broadcasts over q's batch and heads
    v = randn(3, n, 4, seed=seed + 2)  # d_v != d_k
    out = sparse.window_global_attention(q, k, v, window, globals_, is_causal=causal)
    expected = attention64(q, k, v, reference_mask(n, window, set(globals_), causal))
    assert out.shape == (2, 3, n, 4)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_float32_and_a_custom_scale():
    q, k, v = (randn(2, 37, 8, seed=s, dtype=torch.float32) for s in range(3))
    out = sparse.window_global_attention(q, k, v, 8, [0, 20], is_causal=True, scale=0.3)
    expected = attention64(q, k, v, reference_mask(37, 8, {0, 20}, True), scale=0.3)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_without_globals_it_is_chapter_5s_sliding_window_attention():
    q, k, v = (randn(2, 29, 6, seed=s) for s in range(3))
    torch.testing.assert_close(sparse.window_global_attention(q, k, v, 5, is_causal=True),
                               sparse.sliding_window_attention(q, k, v, 5),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("globals_", [[], [0, 1], [9]])
def test_causal_future_tokens_change_no_earlier_output_bit_for_bit(globals_):
    q, k, v = (randn(2, 23, 4, seed=s) for s in range(3))
    before = sparse.window_global_attention(q, k, v, 4, globals_, is_causal=True)
    later = [t.clone() for t in (q, k, v)]
    for t in later:
        t[..., 13:, :] = randn(2, 10, 4, seed=7) * 5
    after = sparse.window_global_attention(*later, 4, globals_, is_causal=True)
    assert torch.equal(before[..., :13, :], after[..., :13, :])
    assert not torch.equal(before[..., 13:, :], after[..., 13:, :])


def test_a_key_outside_the_window_changes_nothing_unless_it_is_global():
    q, k, v = (randn(1, 20, 4, seed=s) for s in range(3))
    changed_k, changed_v = k.clone(), v.clone()
    changed_k[..., 15, :] += 3
    changed_v[..., 15, :] -= 2
    for globals_ in ([], [2]):
        before = sparse.window_global_attention(q, k, v, 3, globals_)
        after = sparse.window_global_attention(q, changed_k, changed_v, 3, globals_)
        far = [i for i in range(20) if abs(i - 15) >= 3 and i not in globals_]
        assert torch.equal(before[..., far, :], after[..., far, :])
    # a global key is seen from everywhere
    before = sparse.window_global_attention(q, k, v, 3, [15])
    after = sparse.window_global_attention(q, changed_k, changed_v, 3, [15])
    assert not torch.isclose(before, after).all(dim=-1).any()


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_in_float64(causal):
    q, k, v = (randn(7, 2, seed=s).requires_grad_() for s in range(3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: sparse.window_global_attention(q, k, v, 3, [0, 5], is_causal=causal),
        (q, k, v))


def test_an_empty_sequence_gives_an_empty_output():
    q, k, v = torch.zeros(2, 0, 4), torch.zeros(2, 0, 4), torch.zeros(1, 0, 3)
    assert sparse.window_global_attention(q, k, v, 4).shape == (2, 0, 3)
    assert sparse.window_global_mask(0, 3).shape == (0, 0)


@pytest.mark.parametrize(("args", "error", "message"), [
    ((4, [4]), ValueError, r"global_tokens must be positions between 0 and n - 1 = 3, got \[4\]"),
    ((4, [-1]), ValueError, r"got \[-1\]"),
    ((4, 2), TypeError, "global_tokens must be a sequence of positions such as range"),
    ((4, [1.0]), TypeError, "global_tokens must hold ints"),
    ((4, [True]), TypeError, "global_tokens must hold ints"),
    ((4, torch.tensor([0.5])), TypeError, "global_tokens must be a 1-D integer tensor"),
    ((0, ()), ValueError, "window must be >= 1, got 0"),
])
def test_bad_arguments_are_named(args, error, message):
    window, globals_ = args
    q = torch.zeros(4, 2)
    with pytest.raises(error, match=message):
        sparse.window_global_attention(q, q, q, window, globals_)
    with pytest.raises(error, match=message):
        sparse.window_global_mask(4, window, globals_)


def test_queries_and_keys_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="is self-attention: q and k must have the same length"):
        sparse.window_global_attention(torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(4, 2), 2)


# --- costs -----------------------------------------------------------------------------

SIZES = [(n, w, g) for n, w, g in itertools.product([1, 2, 5, 9, 16, 17], [1, 2, 4, 7, 20],
                                                    [0, 1, 3]) if g <= n]


@pytest.mark.parametrize("causal", [False, True])
def test_visible_pairs_counts_the_masks_true_entries(causal):
    for n, w, g in SIZES:
        expected = int(reference_mask(n, w, set(range(g)), causal).sum())
        assert sparse.visible_pairs(n, w, g, causal) == expected, (n, w, g)
        assert sparse.window_attention_flops(n, 3, w, g, heads=2, batch=5, causal=causal) \
            == 4 * 3 * 2 * 5 * expected


def test_window_flops_match_chapter_5s_exercise_and_full_attention():
    from attnlib.exercises.ch5 import window_flops_reference

    assert sparse.window_attention_flops(131072, 128, 4096, causal=True) \
        == window_flops_reference(131072, 128, 4096)
    # a window as long as the text is full attention
    assert sparse.window_attention_flops(300, 64, 300) == cost.attention_flops(300, 64)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "window", "g"), [(16, 4, 0), (17, 4, 2), (5, 8, 1), (30, 7, 3)])
def test_the_blocked_flops_are_what_the_matrix_products_count(n, window, g, causal):
    q, k, v = (randn(2, 3, n, 6, seed=s) for s in range(3))
    with FlopCounterMode(display=False) as counter:
        sparse.window_global_attention(q, k, v, window, range(g), is_causal=causal)
    assert counter.get_total_flops() == sparse.window_attention_flops(
        n, 6, window, g, heads=3, batch=2, causal=causal, blocked=True)


class ScoreEntries(TorchDispatchMode):
    """Adds up the entries of every matrix product that contracts over d_k: the score
    tables a call forms (the weighted sums contract over keys instead)."""

    def __init__(self, d_k):
        super().__init__()
        self.d_k, self.entries = d_k, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.bmm.default, torch.ops.aten.mm.default) \
                and args[0].shape[-1] == self.d_k:
            self.entries += out.numel()
        return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("n", "window", "g"), [(16, 4, 0), (17, 4, 2), (5, 8, 1), (40, 8, 3)])
def test_score_bytes_count_the_score_entries_formed(n, window, g, causal):
    q, k, v = randn(2, n, 11, seed=0), randn(2, n, 11, seed=1), randn(2, n, 3, seed=2)
    with ScoreEntries(d_k=11) as counted:  # 11: no number of keys here
        sparse.window_global_attention(q, k, v, window, range(g), is_causal=causal)
    assert sparse.window_score_bytes(n, window, g, heads=2, causal=causal,
                                     dtype=torch.float64) == counted.entries * 8


def test_score_bytes_are_linear_in_n_and_full_size_for_a_long_window():
    def score_bytes(n):
        return sparse.window_score_bytes(n, 64, causal=True, dtype=torch.float32)

    assert score_bytes(8192) == 2 * score_bytes(4096)
    # 2 window keys per query instead of n
    assert score_bytes(4096) * 4096 == cost.score_matrix_bytes(4096, dtype=torch.float32) * 128
    assert score_bytes(50) == cost.score_matrix_bytes(50, dtype=torch.float32)


def test_the_window_cache_stops_growing():
    def cache(n):
        return sparse.window_cache_bytes(n, 128, 4096, n_global=4, heads=8, layers=32)

    assert cache(1000) == cost.kv_cache_bytes(1000, 128, heads=8, layers=32)
    assert cache(4100) == cache(131072) == cost.kv_cache_bytes(4100, 128, heads=8, layers=32)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: sparse.visible_pairs(4, 2, 5), "n_global must be at most n = 4"),
    (lambda: sparse.visible_pairs(0, 2), "n must be >= 1"),
    (lambda: sparse.window_attention_flops(4, 0, 2), "d must be >= 1"),
    (lambda: sparse.window_score_bytes(4, 2, -1), "n_global must be >= 0"),
    (lambda: sparse.window_score_bytes(4, 2, dtype=torch.int8), "dtype must be a floating"),
])
def test_cost_arguments_are_checked(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_random_cases_agree_with_the_reference():
    rng = random.Random(8)
    for seed in range(30):
        n, window = rng.randint(1, 25), rng.randint(1, 9)
        globals_ = rng.sample(range(n), rng.randint(0, min(3, n)))
        causal = rng.random() < 0.5
        q, k, v = randn(n, 3, seed=seed), randn(n, 3, seed=seed + 50), randn(n, 2, seed=seed + 99)
        out = sparse.window_global_attention(q, k, v, window, globals_, is_causal=causal)
        expected = attention64(q, k, v, reference_mask(n, window, set(globals_), causal))
        assert math.isclose(float((out - expected).abs().max()), 0, abs_tol=1e-12), seed
