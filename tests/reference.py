"""Independent references and random cases shared by the test files: textbook float64
attention written without the library, and random inputs of awkward shapes."""

import math
import random

import torch

from attnlib import projections


def randn(*shape, seed=0, dtype=torch.float64):
    """Standard normal numbers, the same for a seed."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_qkv(seed, dtype=torch.float32, max_n=9, max_d=9):
    """q (..., L, d_k), k (..., S, d_k), v (..., S, d_v) with random sizes, L != S and
    d_v != d_k in general, and leading dimensions that broadcast (k and v over q's).
    Returns (q, k, v, rng) so that a test can draw its own options from the same seed."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    lead = rng.choice([(), (2,), (2, 3), (1, 4)])
    lead_k = tuple(1 if rng.random() < 0.3 else d for d in lead)
    n_q, n_k = rng.randint(1, max_n), rng.randint(1, max_n)
    d_k, d_v = rng.randint(1, max_d), rng.randint(1, max_d)
    q = torch.randn(*lead, n_q, d_k, generator=gen, dtype=dtype)
    k = torch.randn(*lead_k, n_k, d_k, generator=gen, dtype=dtype)
    v = torch.randn(*lead_k, n_k, d_v, generator=gen, dtype=dtype)
    return q, k, v, rng


def scores64(q, k, mask=None, is_causal=False, scale=None):
    """Q K^T * scale in float64, the textbook way: -inf where a boolean mask is False (or
    above the top-left diagonal when is_causal), a float mask added."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q.double() @ k.double().mT * scale
    if is_causal:
        mask = torch.tensor([[j <= i for j in range(k.shape[-2])] for i in range(q.shape[-2])],
                            dtype=torch.bool)
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, -math.inf)
    return scores + mask.double()


def weights64(q, k, mask=None, is_causal=False, scale=None):
    """softmax(Q K^T * scale + mask) in float64; NaN rows where a query sees no key."""
    return torch.softmax(scores64(q, k, mask, is_causal, scale), dim=-1)


def attention64(q, k, v, mask=None, is_causal=False, scale=None):
    """softmax(Q K^T * scale + mask) V in float64, the textbook way."""
    return weights64(q, k, mask, is_causal, scale) @ v.double()


def band_mask(n, window):
    """Boolean (n, n): query i sees key j when 0 <= i - j < window, built entry by entry."""
    return torch.tensor([[0 <= i - j < window for j in range(n)] for i in range(n)])


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
