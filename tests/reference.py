"""Independent references shared by several test files."""

import torch

from attnlib import projections


def top_other_token(sentence):
    """bank's best-scoring other token under the hand-built projections, computed with
    plain float64 Python loops instead of the library's matrix products."""
    tokens, x = projections.embed(sentence, dtype=torch.float64)
    w_q, w_k, _ = (w.double().tolist() for w in projections.hand_built_projections())
    rows = x.tolist()

    def times(row, w):
        return [sum(r * w[f][c] for f, r in enumerate(row)) for c in range(len(w[0]))]

    q = times(rows[tokens.index("bank")], w_q)
    scores = {t: sum(a * b for a, b in zip(q, times(rows[j], w_k), strict=True))
              for j, t in enumerate(tokens) if t != "bank"}
    return max(scores, key=scores.get), scores
