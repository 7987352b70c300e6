import pytest
import torch

from attnlib import projections
from tests.reference import top_other_token

zeros = torch.zeros


def linear_with(weight, bias=None):
    """A torch.nn.Linear computing x @ weight + bias (Linear stores weight transposed)."""
    layer = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None,
                            dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight.T)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead", [(), (3,), (2, 4)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_project_matches_nn_linear(dtype, lead, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 5, 8, generator=gen, dtype=dtype)
    weight = torch.randn(8, 3, generator=gen, dtype=dtype)
    bias = torch.randn(3, generator=gen, dtype=dtype) if with_bias else None
    expected = linear_with(weight, bias)(x).detach()
    got = projections.project(x, weight, bias)
    assert got.shape == (*lead, 5, 3)
    torch.testing.assert_close(got, expected)


def test_qkv_matches_three_linear_layers_with_different_d_v():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 6, generator=gen, dtype=torch.float64)
    w_q, w_k, w_v = (torch.randn(6, d, generator=gen, dtype=torch.float64) for d in (4, 4, 5))
    q, k, v = projections.qkv(x, w_q, w_k, w_v)
    for got, w in ((q, w_q), (k, w_k), (v, w_v)):
        torch.testing.assert_close(got, linear_with(w)(x).detach(), rtol=1e-12, atol=1e-12)
    assert (q.shape, k.shape, v.shape) == ((2, 7, 4), (2, 7, 4), (2, 7, 5))


def test_qkv_of_a_batch_equals_qkv_of_each_sequence():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 6, generator=gen)
    weights = projections.random_projections(6, 4, 2, seed=3)
    batched = projections.qkv(x, *weights)
    for b in range(3):
        for got, alone in zip(batched, projections.qkv(x[b], *weights), strict=True):
            torch.testing.assert_close(got[b], alone)


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        ((zeros(4, 5), zeros(6, 2)), ValueError, ["x", "d_model = 5", "(4, 5)", "(6, 2)"]),
        ((zeros(4, 6), zeros(6)), ValueError, ["weight", "(6,)"]),
        ((zeros(4, 6, dtype=torch.int64), zeros(6, 2)), TypeError, ["x", "torch.int64"]),
        (([[1.0] * 6], zeros(6, 2)), TypeError, ["x", "list"]),
        ((zeros(4, 6), zeros(6, 2, dtype=torch.float64)), TypeError, ["float32", "float64"]),
        ((zeros(4, 6), zeros(6, 2), zeros(3)), ValueError, ["bias", "(2,)", "(3,)"]),
    ],
)
def test_project_rejects_bad_input_naming_the_argument(args, error, words):
    with pytest.raises(error) as info:
        projections.project(*args)
    for word in words:
        assert word in str(info.value)


def test_qkv_names_the_bad_weight():
    x = torch.zeros(4, 6)
    with pytest.raises(ValueError, match=r"w_v expects d_model = 5"):
        projections.qkv(x, torch.zeros(6, 2), torch.zeros(6, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"w_q and w_k .* got \(6, 2\) and \(6, 3\)"):
        projections.qkv(x, torch.zeros(6, 2), torch.zeros(6, 3), torch.zeros(6, 2))


def test_embed_rows_are_the_vocabulary_features():
    tokens, x = projections.embed("The river, the BANK.")
    assert tokens == ["the", "river", "the", "bank"]
    assert x.shape == (4, len(projections.FEATURES))
    for row, token in zip(x.tolist(), tokens, strict=True):
        for value, feature in zip(row, projections.FEATURES, strict=True):
            assert value == pytest.approx(projections.VOCABULARY[token].get(feature, 0.0))


@pytest.mark.parametrize(
    ("sentence", "error", "words"),
    [("the river zebra", ValueError, ["'zebra'", "known words"]),
     ("  ...  ", ValueError, ["at least one word"]),
     (42, TypeError, ["sentence", "int"])],
)
def test_embed_rejects_what_it_cannot_embed(sentence, error, words):
    with pytest.raises(error) as info:
        projections.embed(sentence)
    for word in words:
        assert word in str(info.value)


def test_hand_built_bank_query_finds_the_topic_word():
    best, scores = top_other_token(projections.EXAMPLE_SENTENCE)
    assert best == "river"
    assert scores["river"] > scores["boat"] > scores["drifted"] > scores["the"]
    assert top_other_token("she deposited cash at the bank")[0] == "cash"


def test_hand_built_values_carry_the_topic():
    tokens, x = projections.embed("river money")
    _, _, v = projections.qkv(x, *projections.hand_built_projections())
    assert v.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_random_projections_are_reproducible_with_the_initialisation_variance():
    a = projections.random_projections(256, 256, seed=5)
    b = projections.random_projections(256, 256, seed=5)
    c = projections.random_projections(256, 256, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert a[0].var().item() == pytest.approx(1 / 256, rel=0.05)
    assert [tuple(w.shape) for w in projections.random_projections(6, 3, 5)] == [
        (6, 3), (6, 3), (6, 5)]


def test_random_projections_reject_bad_sizes():
    with pytest.raises(ValueError, match="d_k"):
        projections.random_projections(6, 0)
    with pytest.raises(TypeError, match="d_model must be an int, got float"):
        projections.random_projections(6.0, 2)
