import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from attnlib.plotting import ANNOTATE_UP_TO, attention_heatmap, figure_png


def texts(ax):
    return [t.get_text() for t in ax.texts]


def test_heatmap_labels_both_axes_and_writes_values_when_small():
    weights = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    ax = attention_heatmap(weights, ["river", "bank"], title="t")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["river", "bank"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["river", "bank"]
    assert texts(ax) == ["0.25", "0.75", "1.00", "0.00"]
    assert ax.get_xlabel() == "key (attended to)" and ax.get_ylabel() == "query (attending)"
    colorbar_axes = [a for a in ax.figure.axes if a is not ax]
    assert len(colorbar_axes) == 1 and colorbar_axes[0].get_ylabel() == "attention weight"
    np.testing.assert_allclose(ax.images[0].get_array(), weights.numpy())
    plt.close(ax.figure)


def test_heatmap_does_not_write_values_in_large_matrices():
    n = ANNOTATE_UP_TO + 1
    ax = attention_heatmap(np.eye(n))
    assert texts(ax) == []
    plt.close(ax.figure)


def test_heatmap_shows_minus_infinity_as_masked():
    scores = np.array([[0.5, -np.inf], [0.1, 0.2]])
    ax = attention_heatmap(scores, ["a", "b"])
    assert texts(ax)[1] == "-inf"
    assert ax.images[0].get_array().mask.tolist() == [[False, True], [False, False]]
    plt.close(ax.figure)


def test_heatmap_rectangular_with_separate_column_labels():
    ax = attention_heatmap(np.ones((2, 3)), ["q1", "q2"], ["k1", "k2", "k3"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["k1", "k2", "k3"]
    plt.close(ax.figure)


@pytest.mark.parametrize(
    ("args", "match"),
    [((np.ones((2, 2)), ["a"]), "row_labels has 1 labels, but the matrix has 2 rows"),
     ((np.ones((2, 2, 2)),), r"matrix must be 2-D .* got shape \(2, 2, 2\)")],
)
def test_heatmap_rejects_mismatched_input(args, match):
    with pytest.raises(ValueError, match=match):
        attention_heatmap(*args)
    plt.close("all")


def test_figure_png_renders_and_closes():
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = figure_png(fig)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert not plt.fignum_exists(fig.number)


def test_heatmap_can_leave_out_the_colour_bar():
    ax = attention_heatmap(np.ones((2, 2)), colorbar=False)
    assert ax.figure.axes == [ax]
    plt.close(ax.figure)
