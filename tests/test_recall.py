"""Associative recall built by hand: the task's layout, what each family retrieves, and the
predictions next to the measurements."""

import math

import pytest
import torch

from attnlib import linear_attention as la
from attnlib import recall


def test_the_task_lays_out_pairs_then_queries():
    task = recall.recall_task(6, 5, seed=3)
    n = 12
    assert task.q.shape == task.k.shape == task.v.shape == (n, 5)
    torch.testing.assert_close(task.k[:6].norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(task.v[:6], task.values)
    assert not task.q[:6].any() and not task.k[6:].any() and not task.v[6:].any()
    assert sorted(task.answers.tolist()) == list(range(6))
    assert torch.equal(task.query_positions, torch.arange(6, 12))
    assert torch.equal(task.q[task.query_positions], task.k[task.answers])
    again = recall.recall_task(6, 5, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(task, again, strict=True))
    assert not torch.equal(recall.recall_task(6, 5, seed=4).k, task.k)


@pytest.mark.parametrize(("pairs", "d"), [(5, 8), (8, 8), (9, 8), (30, 7), (100, 33), (64, 16)])
def test_orthogonal_keys_are_the_best_a_d_dimensional_state_allows(pairs, d):
    keys = recall.recall_task(pairs, d, seed=pairs, keys="orthogonal").k[:pairs].double()
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(pairs, dtype=torch.float64))
    overlaps = keys @ keys.mT
    crosstalk = (overlaps**2).sum(dim=-1) - 1  # sum over i != j of (k_i . k_j)^2, per query
    # Welch: sum_ij (k_i . k_j)^2 >= pairs^2 / d for any unit keys; these reach it
    least = max(0.0, pairs / d - 1)
    torch.testing.assert_close(crosstalk, torch.full((pairs,), least, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    assert math.isclose(recall.key_overlap(pairs, d, "orthogonal") * (pairs - 1), least,
                        abs_tol=1e-12)
    random_keys = recall.recall_task(pairs, d, seed=pairs).k[:pairs].double()
    assert float(((random_keys @ random_keys.mT) ** 2).sum()) >= pairs**2 / d


def test_with_orthogonal_keys_d_pairs_come_back_clean_and_then_the_least_crosstalk():
    for d in (8, 16):
        task = recall.recall_task(d, d, keys="orthogonal")
        outputs = recall.recall_outputs(task, "linear memory")
        torch.testing.assert_close(outputs, task.values[task.answers], rtol=1e-5, atol=1e-5)
        assert recall.predicted_recall(d, d, "orthogonal") == 1.0
        assert recall.predicted_crosstalk(d, d, "orthogonal") == 0.0
        for pairs in (2 * d, 4 * d):
            measured = [recall.measured_crosstalk(t, recall.recall_outputs(t, "linear memory"))
                        for t in (recall.recall_task(pairs, d, s, "orthogonal") for s in range(3))]
            assert math.isclose(sum(measured) / 3, math.sqrt(pairs / d - 1), rel_tol=0.1)
    task = recall.recall_task(1024, 8, keys="orthogonal")
    assert recall.recall_accuracy(task, "softmax") == 1.0


def test_softmax_attention_retrieves_every_value_even_among_1024_keys_in_8_dimensions():
    for seed in range(5):
        assert recall.recall_accuracy(recall.recall_task(1024, 8, seed), "softmax") == 1.0
    assert recall.recall_accuracy(recall.recall_task(64, 32), "softmax") == 1.0


@pytest.mark.parametrize(("pairs", "window"), [(16, 4), (16, 17), (40, 25), (8, 1)])
def test_a_window_retrieves_exactly_the_pairs_inside_it(pairs, window):
    task = recall.recall_task(pairs, 16, seed=pairs)
    found = recall.decode(task, recall.recall_outputs(task, "window", window=window))
    inside = (task.query_positions - task.answers) < window
    assert torch.equal(found == task.answers, inside)
    assert recall.recall_accuracy(task, "window", window=window) \
        == recall.predicted_window_recall(task, window)


def test_the_scan_without_decay_is_the_linear_memory():
    task = recall.recall_task(40, 16, seed=2)
    scan = recall.recall_outputs(task, "scan")
    torch.testing.assert_close(scan, recall.recall_outputs(task, "linear memory"))
    # the linear memory written out: sum over the pairs of (q . k_i) v_i
    torch.testing.assert_close(scan, task.q[task.query_positions] @ task.k[:40].mT @ task.values)


def test_the_crosstalk_grows_like_the_square_root_of_pairs_over_d():
    for pairs, d in [(16, 16), (64, 32), (100, 48), (20, 64)]:
        measured = [recall.measured_crosstalk(task, recall.recall_outputs(task, "linear memory"))
                    for task in (recall.recall_task(pairs, d, seed) for seed in range(3))]
        predicted = recall.predicted_crosstalk(pairs, d)
        assert math.isclose(sum(measured) / 3, predicted, rel_tol=0.1), (pairs, d)
    task = recall.recall_task(64, 32)
    assert recall.measured_crosstalk(task, recall.recall_outputs(task, "softmax")) < 1e-6


def test_predicted_recall_is_the_gaussian_model_it_states():
    """A Monte Carlo run of the model in the docstring: the asked value scores 1 + s x,
    each of the pairs - 1 others an independent normal of spread sigma."""
    gen = torch.Generator().manual_seed(0)
    for pairs, d in [(8, 8), (64, 32), (256, 64)]:
        s = math.sqrt(pairs - 1) / d
        sigma = math.sqrt(2 / d + (pairs - 2) / d**2)
        right = 1 + s * torch.randn(20000, generator=gen, dtype=torch.float64)
        others = sigma * torch.randn(20000, pairs - 1, generator=gen, dtype=torch.float64)
        simulated = (right > others.max(dim=1).values).double().mean().item()
        assert abs(recall.predicted_recall(pairs, d) - simulated) < 0.01, (pairs, d)
    assert recall.predicted_recall(1, 16) == 1.0


def test_predicted_recall_tracks_the_linear_memory_from_below():
    for d in (16, 32):
        for pairs in (d // 2, d, 2 * d, 4 * d):
            measured = sum(recall.recall_accuracy(recall.recall_task(pairs, d, seed),
                                                  "linear memory")
                           for seed in range(3)) / 3
            predicted = recall.predicted_recall(pairs, d)
            assert predicted - 0.03 <= measured <= predicted + 0.15, (pairs, d)


def test_recall_breaks_as_pairs_outgrow_d():
    for d in (16, 32):
        few = recall.recall_accuracy(recall.recall_task(d // 4, d), "linear memory")
        many = recall.recall_accuracy(recall.recall_task(16 * d, d), "linear memory")
        assert few == 1.0 and many < 0.1, (d, few, many)


def test_elu_plus_1_features_recall_less_than_the_plain_memory():
    """Positive features overlap: phi(k_i) . phi(k_j) > 0 for every pair."""
    task = recall.recall_task(32, 32, seed=1)
    features = la.elu_feature_map(task.k[:32] * recall.SHARPNESS)
    assert (features @ features.mT > 0).all()
    assert recall.recall_accuracy(task, "linear") < recall.recall_accuracy(task, "linear memory")


def test_a_decaying_scan_forgets_the_oldest_pairs():
    task = recall.recall_task(32, 64, seed=0)
    found = recall.decode(task, recall.recall_outputs(task, "scan", decay=0.8)) == task.answers
    age = task.query_positions - task.answers
    assert found[age <= 20].all() and not found[age >= 45].any()
    assert recall.recall_accuracy(task, "scan") == 1.0


def test_decode_says_nothing_retrieved_for_a_zero_output():
    task = recall.recall_task(4, 8)
    outputs = task.values[task.answers].clone()
    outputs[1] = 0
    found = recall.decode(task, outputs)
    assert found[1] == -1 and torch.equal(found[[0, 2, 3]], task.answers[[0, 2, 3]])


def test_recall_curves_hold_one_value_per_number_of_pairs():
    curves = recall.recall_curves([4, 16], 16, window=8, seeds=(0, 1))
    assert set(curves) == {*recall.METHODS, "predicted", "predicted window"}
    assert all(len(values) == 2 for values in curves.values())
    assert curves["softmax"] == [1.0, 1.0] and curves["scan"] == curves["linear memory"]
    assert curves["predicted"] == [recall.predicted_recall(p, 16) for p in (4, 16)]
    assert curves["window"] == curves["predicted window"]


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda t: recall.recall_outputs(t, "hash"), ValueError, "method must be one of"),
    (lambda t: recall.recall_outputs(t, "window"), ValueError,
     "window must be given for method 'window' and only for it"),
    (lambda t: recall.recall_outputs(t, "softmax", window=3), ValueError, "only for it"),
    (lambda t: recall.decode(t, torch.zeros(3, 8)), ValueError,
     r"outputs must have shape \(queries, d\) = \(4, 8\), got \(3, 8\)"),
    (lambda t: recall.recall_task(0, 8), ValueError, "pairs must be >= 1"),
    (lambda t: recall.predicted_crosstalk(4, 0), ValueError, "d must be >= 1"),
    (lambda t: recall.predicted_window_recall(t, 0), ValueError, "window must be >= 1"),
    (lambda t: recall.recall_task(4, 8, keys="sparse"), ValueError,
     r"keys must be one of \('random', 'orthogonal'\), got 'sparse'"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call(recall.recall_task(4, 8))
