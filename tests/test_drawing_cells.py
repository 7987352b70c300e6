"""On the website, a cell that only draws a figure shows the figure and hides its code
(the reader can open it); a cell that computes something stays visible.  The rule is
applied by `make notebooks` (tools/notebooks.py), so nobody tags cells by hand."""

import nbformat
import pytest

from tools.notebooks import (
    COLLAPSED_TAG,
    chapter_notebooks,
    collapse_drawing_cells,
    only_draws,
    shows_only_figures,
)

pytestmark = pytest.mark.notebooks  # runs or reads the chapter notebooks

FIGURE = nbformat.v4.new_output("display_data", {"image/png": "iVBORw0KGgo=",
                                                 "text/plain": "<Figure>"})
TEXT = nbformat.v4.new_output("stream", name="stdout", text="3\n")


def cell(source, *outputs, tags=()):
    new = nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})
    new.outputs = list(outputs)
    return new


@pytest.mark.parametrize("source", [
    "fig, ax = plt.subplots()\nax.plot([1, 2])\nax.set_title('t')\nplt.show()",
    "attention_heatmap(A, tokens, vmin=0)\nplt.show()",
    "fig, axes = plt.subplots(1, 2)\nfor ax, M in zip(axes, (Q, K)):\n"
    "    attention_heatmap(M, ax=ax)\naxes[0].set_ylabel('token')\nplt.show()",
])
def test_drawing_code_only_draws(source):
    assert only_draws(source)


@pytest.mark.parametrize("source", [
    "S = Q @ K.T\nattention_heatmap(S, tokens)\nplt.show()",  # computes S first: teaches
    "fig, ax = plt.subplots()\nsizes = [2**k for k in range(8)]\nax.plot(sizes)",
    "%timeit f()",  # a magic is not plain Python
    "",
])
def test_code_that_computes_something_does_not_only_draw(source):
    assert not only_draws(source)


def test_collapse_tags_exactly_the_drawing_cells_with_figure_outputs():
    drawing = "fig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()"
    nb = nbformat.v4.new_notebook(cells=[
        cell(drawing, FIGURE, tags=["nbval-ignore-output"]),
        cell(drawing, FIGURE, TEXT),  # prints too: the reader needs to see why
        cell("S = Q @ K.T\nattention_heatmap(S)", FIGURE, tags=[COLLAPSED_TAG]),  # teaches
        cell(drawing),  # not run: no figure to show instead of the code
        nbformat.v4.new_markdown_cell("plt.show()"),
    ])
    collapsed = collapse_drawing_cells(nb)
    assert collapsed == [nb.cells[0]]
    assert nb.cells[0].metadata["tags"] == ["nbval-ignore-output", COLLAPSED_TAG]
    assert "tags" not in nb.cells[1].metadata and "tags" not in nb.cells[2].metadata
    assert collapse_drawing_cells(nb) == collapsed  # applying it again changes nothing
    assert nb.cells[0].metadata["tags"] == ["nbval-ignore-output", COLLAPSED_TAG]


def test_figure_outputs_are_recognised():
    assert shows_only_figures(cell("", FIGURE, FIGURE))
    assert not shows_only_figures(cell("", FIGURE, TEXT))
    assert not shows_only_figures(cell(""))


@pytest.mark.parametrize("path", chapter_notebooks(), ids=[p.stem for p in chapter_notebooks()])
def test_stored_chapters_follow_the_rule(path):
    """`make notebooks` applies the rule: the stored tags are the rule's."""
    nb = nbformat.read(path, as_version=4)
    stored = [i for i, c in enumerate(nb.cells) if COLLAPSED_TAG in c.metadata.get("tags", [])]
    expected = [nb.cells.index(c) for c in collapse_drawing_cells(nb)]
    assert stored == expected, "run `make notebooks`"
