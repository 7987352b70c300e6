"""Chapter 1: from token embeddings X to queries, keys and values.

    Q = X W_Q,   K = X W_K,   V = X W_V

with X of shape (..., N, d_model), W_Q and W_K of shape (d_model, d_k), W_V of shape
(d_model, d_v). All three come from the same X: that is what makes it *self*-attention.

The module also holds the course's small hand-built example: a vocabulary whose
embedding dimensions have names, and projections chosen by hand so that the query of
"bank" finds the word that says which kind of bank it is.
"""

import math
import re

import torch

from attnlib._checks import require_tensor

# --- the hand-built example --------------------------------------------------------

#: Names of the embedding dimensions of the toy vocabulary (d_model = 6).
FEATURES = ("water", "money", "ambiguous", "noun", "verb", "function")

#: The toy vocabulary: each word's embedding, feature by feature (missing features are 0).
VOCABULARY = {
    # function words
    **{w: {"function": 1.0} for w in ("the", "a", "to", "at", "by", "on", "of", "in", "and")},
    # nouns that name a topic: water or money
    "river": {"noun": 1.0, "water": 1.0},
    "water": {"noun": 1.0, "water": 0.9},
    "fish": {"noun": 1.0, "water": 0.8},
    "boat": {"noun": 1.0, "water": 0.6},
    "money": {"noun": 1.0, "money": 1.0},
    "cash": {"noun": 1.0, "money": 0.9},
    "loan": {"noun": 1.0, "money": 0.8},
    # nouns without a topic, and the ambiguous one
    "she": {"noun": 1.0},
    "i": {"noun": 1.0},
    "bank": {"noun": 1.0, "ambiguous": 1.0},
    # verbs, some leaning to a topic
    "drifted": {"verb": 1.0, "water": 0.2},
    "swam": {"verb": 1.0, "water": 0.4},
    "deposited": {"verb": 1.0, "money": 0.6},
    "approved": {"verb": 1.0, "money": 0.3},
    "sat": {"verb": 1.0},
    "walked": {"verb": 1.0},
}

#: The sentence chapters 1 and 2 use.
EXAMPLE_SENTENCE = "the boat drifted to the river bank"

#: Names of the query/key dimensions of the hand-built projections (d_k = 2) ...
QK_FEATURES = ("topic", "noun")
#: ... and of the value dimensions (d_v = 2).
V_FEATURES = ("water sense", "money sense")


def tokenize(sentence):
    """Split a sentence into lower-case words of the toy vocabulary.

    Raises ValueError for an empty sentence or a word outside `VOCABULARY`.
    """
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a str, got {type(sentence).__name__}")
    tokens = re.findall(r"[a-z]+", sentence.lower())
    if not tokens:
        raise ValueError(f"sentence must contain at least one word, got {sentence!r}")
    unknown = [t for t in tokens if t not in VOCABULARY]
    if unknown:
        raise ValueError(
            f"sentence contains {unknown[0]!r}, which is not in the toy vocabulary; "
            f"known words: {', '.join(sorted(VOCABULARY))}"
        )
    return tokens


def embed(sentence, dtype=torch.float32):
    """Tokens and embeddings of a sentence: (tokens, X) with X of shape (N, d_model = 6).

    Row i of X is the feature vector of token i, with features named by `FEATURES`.
    """
    tokens = tokenize(sentence)
    rows = [[VOCABULARY[t].get(f, 0.0) for f in FEATURES] for t in tokens]
    return tokens, torch.tensor(rows, dtype=dtype)


def hand_built_projections(dtype=torch.float32):
    """W_Q, W_K (6 x 2) and W_V (6 x 2) chosen by hand for the toy vocabulary.

    Query "topic": an ambiguous word asks which topic is near.  Key "topic": a word
    that carries a topic (water or money) answers.  Query "noun": a verb looks for
    nouns; key "noun": nouns answer.  Values carry the topic itself, so whatever a token
    attends to, it gathers a "water sense" or a "money sense".
    """
    f = {name: i for i, name in enumerate(FEATURES)}
    w_q = torch.zeros(len(FEATURES), 2, dtype=dtype)
    w_k = torch.zeros(len(FEATURES), 2, dtype=dtype)
    w_v = torch.zeros(len(FEATURES), 2, dtype=dtype)
    w_q[f["ambiguous"], 0] = 1.0  # "which topic is near me?"
    w_k[f["water"], 0] = 1.0  # "I carry a topic"
    w_k[f["money"], 0] = 1.0
    w_q[f["verb"], 1] = 1.0  # "where are the nouns?"
    w_k[f["noun"], 1] = 1.0  # "I am a noun"
    w_v[f["water"], 0] = 1.0  # the topic itself travels in the value
    w_v[f["money"], 1] = 1.0
    return w_q, w_k, w_v


def random_projections(d_model, d_k, d_v=None, seed=0, dtype=torch.float32):
    """Random W_Q, W_K (d_model x d_k) and W_V (d_model x d_v, default d_k).

    Entries are N(0, 1/d_model), a common initialisation, drawn from a generator seeded
    with `seed` so that the same seed gives the same matrices on every machine.
    """
    for name, value in (("d_model", d_model), ("d_k", d_k), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    d_v = d_k if d_v is None else d_v
    if min(d_model, d_k, d_v) < 1:
        raise ValueError(f"d_model, d_k and d_v must be >= 1, got {d_model}, {d_k}, {d_v}")
    gen = torch.Generator().manual_seed(seed)
    std = 1 / math.sqrt(d_model)
    shapes = [(d_model, d_k), (d_model, d_k), (d_model, d_v)]
    return tuple(torch.randn(s, generator=gen, dtype=torch.float64).mul_(std).to(dtype)
                 for s in shapes)


# --- the projections ------------------------------------------------------------------


def _check_weight(x, weight, name):
    require_tensor("x", x)
    require_tensor(name, weight)
    if weight.dim() != 2:
        raise ValueError(
            f"{name} must be a (d_model, d_out) matrix, got shape {tuple(weight.shape)}"
        )
    if x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"x has d_model = {x.shape[-1]} (shape {tuple(x.shape)}), but {name} expects "
            f"d_model = {weight.shape[0]} (shape {tuple(weight.shape)}, rows = d_model)"
        )
    if x.dtype != weight.dtype:
        raise TypeError(f"x and {name} must share a dtype, got {x.dtype} and {weight.dtype}")


def project(x, weight, bias=None):
    """One linear projection, in the course's notation: x @ weight (+ bias).

    x: (..., N, d_model); weight: (d_model, d_out); bias: (d_out,) or None.
    Returns (..., N, d_out).  (torch.nn.Linear stores the transpose: weight = W.T.)
    """
    _check_weight(x, weight, "weight")
    out = x @ weight
    if bias is not None:
        require_tensor("bias", bias)
        if bias.shape != (weight.shape[1],):
            raise ValueError(
                f"bias must have shape ({weight.shape[1]},) to match weight's d_out, "
                f"got {tuple(bias.shape)}"
            )
        out = out + bias
    return out


def qkv(x, w_q, w_k, w_v):
    """Queries, keys and values of one sequence: (X W_Q, X W_K, X W_V).

    x: (..., N, d_model); w_q, w_k: (d_model, d_k); w_v: (d_model, d_v).
    Returns Q, K of shape (..., N, d_k) and V of shape (..., N, d_v).
    """
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        _check_weight(x, w, name)
    if w_q.shape != w_k.shape:
        raise ValueError(
            f"w_q and w_k must have the same shape (d_model, d_k), since every query is "
            f"compared with every key; got {tuple(w_q.shape)} and {tuple(w_k.shape)}"
        )
    return x @ w_q, x @ w_k, x @ w_v
