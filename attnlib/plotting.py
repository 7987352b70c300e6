"""The attention heatmap every chapter uses, and figure-to-image helpers.

Rows are queries (the token that attends), columns are keys (the token attended to):
entry [i, j] is how much token i looks at token j.
"""

import io

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

#: Matrices up to this many rows and columns get their values written in the cells.
ANNOTATE_UP_TO = 12


def _as_matrix(name, matrix):
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().double().numpy()
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (queries x keys), got shape {matrix.shape}")
    return matrix


def _check_labels(name, labels, size, axis):
    if labels is None:
        return [str(i) for i in range(size)]
    labels = [str(label) for label in labels]
    if len(labels) != size:
        raise ValueError(f"{name} has {len(labels)} labels, but the matrix has {size} {axis}")
    return labels


def attention_heatmap(
    matrix,
    row_labels=None,
    col_labels=None,
    *,
    ax=None,
    title=None,
    colorbar_label="attention weight",
    colorbar=True,
    annotate=None,
    fmt=".2f",
    cmap="viridis",
    vmin=None,
    vmax=None,
    xlabel="key (attended to)",
    ylabel="query (attending)",
):
    """Draw an (n_queries x n_keys) matrix as a heatmap with token labels and a colour bar.

    `col_labels` defaults to `row_labels` (self-attention).  Values are written in the
    cells when `annotate` is True, or by default when the matrix is at most
    `ANNOTATE_UP_TO` on each side.  `-inf` entries (masked scores) are drawn grey and
    written as "-inf".  Returns the matplotlib Axes.
    """
    m = _as_matrix("matrix", matrix)
    rows = _check_labels("row_labels", row_labels, m.shape[0], "rows")
    cols = _check_labels("col_labels", row_labels if col_labels is None else col_labels,
                         m.shape[1], "columns")
    if ax is None:
        side = min(0.55 * max(m.shape) + 2.0, 9.0)
        _, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    finite = m[np.isfinite(m)]
    masked = np.ma.masked_invalid(m)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
    image = ax.imshow(
        masked,
        cmap=colormap,
        vmin=vmin if vmin is not None else (finite.min() if finite.size else 0.0),
        vmax=vmax if vmax is not None else (finite.max() if finite.size else 1.0),
        aspect="auto",
    )
    ax.set_xticks(range(m.shape[1]), cols, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(m.shape[0]), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label=colorbar_label)
    if annotate is None:
        annotate = max(m.shape) <= ANNOTATE_UP_TO
    if annotate:
        norm = image.norm
        for (i, j), value in np.ndenumerate(m):
            if np.isfinite(value):
                text = format(value, fmt)
                dark = image.cmap(norm(value))[:3]
                color = "black" if np.dot(dark, (0.299, 0.587, 0.114)) > 0.5 else "white"
            else:
                text, color = ("-inf" if value < 0 else str(value)), "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
    return ax


def figure_png(fig, dpi=100):
    """Render a figure to PNG bytes and close it (so it is not drawn a second time)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
