"""Associative recall, built by hand: what each family can and cannot look up.

The context holds `pairs` key-value pairs; later queries each name one of the keys and
ask for its value.  The task goes back to the toy problem of Ba et al. (2016,
https://arxiv.org/abs/1610.06258: "c9k8j3f1??c" -> 9); H3 (Fu et al., 2023,
https://arxiv.org/abs/2212.14052) used it to show that state-space models fall short of
attention at recalling earlier tokens; its form with many queries in one context, used
here, is Zoology's multi-query associative recall (Arora et al., 2023,
https://arxiv.org/abs/2312.04927); and Based (Arora et al., 2024,
https://arxiv.org/abs/2402.18668) ties the recall of a recurrent model to the size of
its state.  Nothing is trained: the vectors are chosen so that each mechanism does the
best it can, and what fails then fails because of the mechanism.

`recall_task` lays out one context of N = 2 * pairs positions.  Position i < pairs holds
pair i: key k_i and value v_i, unit vectors in d dimensions (one position holds both, as
after the "previous token" step that a trained model learns first).  The values are
random; the keys are random too, or (keys="orthogonal") the best a d x d state allows:
orthonormal while pairs <= d, beyond that a tight frame, sum_i k_i k_i^T = (pairs/d) I,
which spreads the unavoidable overlap evenly.  Positions pairs .. N - 1 are the queries,
each pair asked once in a random order: the query vector is the asked key, and the key
and value there are 0, so the queries write nothing.  A method's output at a query
position is read by `decode`: the value it is closest to (dot product), or -1 when the
output is exactly 0 (nothing retrieved).

- softmax attention keeps every key and value: with enough sharpness (the scale of the
  scores) it finds the exact key, at any number of pairs;
- a sliding window sees only the last `window` positions: a pair further back is lost
  (`predicted_window_recall`);
- linear attention keeps sum_i phi(k_i) v_i^T, a d x d state: reading it with the asked
  key returns v_j plus crosstalk sum_{i != j} (k_i . k_j) v_i from every other pair.  At
  most d keys can be orthogonal in d dimensions, so at most d pairs come back clean.
  Beyond, the squared overlaps of any unit keys add up to at least pairs/d - 1 per query
  on average: sum_ij (k_i . k_j)^2, the squared Frobenius norm of K^T K, is at least
  trace(K^T K)^2 / d = pairs^2 / d (the bound of Welch, 1974, "Lower bounds on the
  maximum cross correlation of signals", IEEE Transactions on Information Theory), and
  the orthogonal keys reach it.  Random keys overlap from the second pair on, k_i . k_j
  of mean square 1/d: crosstalk of size sqrt((pairs - 1) / d) (`predicted_crosstalk`),
  as large as the value once pairs > d.  Telling which value came back (`decode`)
  tolerates some crosstalk; `predicted_recall` is the chance that it still succeeds.
  The elu + 1 feature map is positive, so every phi(k_i) . phi(k_j) is positive too and
  the crosstalk is larger still;
- the scan with no decay keeps the same d x d state (x = v, b = k, c = q): the same
  numbers as linear attention without feature map or normaliser, and the same limit.
"""

import math
from typing import NamedTuple

import torch

from attnlib import linear_attention as linear
from attnlib import sparse, ssm
from attnlib._checks import require_positive_int, require_tensor
from attnlib.attention import scaled_dot_product_attention

#: Scale of the scores for softmax and window attention, and of q and k for elu + 1
#: linear attention (phi(beta x) is close to beta * relu(x) for a large beta): sharp
#: enough that softmax picks the exact key among 1024 random unit keys in 8 dimensions,
#: where the closest two keys can be nearly parallel (100 is not, for some seeds).
SHARPNESS = 1000.0

#: The methods that `recall_outputs` runs.
METHODS = ("softmax", "window", "linear", "linear memory", "scan")


class RecallTask(NamedTuple):
    """One associative-recall context, from `recall_task`."""

    q: torch.Tensor  #: (N, d) queries: 0 at the pairs, the asked key at the queries
    k: torch.Tensor  #: (N, d) keys: k_i at pair i, 0 at the queries
    v: torch.Tensor  #: (N, d) values: v_i at pair i, 0 at the queries
    values: torch.Tensor  #: (pairs, d) the values, the candidates that `decode` chooses from
    query_positions: torch.Tensor  #: (queries,) where the queries sit
    answers: torch.Tensor  #: (queries,) the pair each query asks for (its position, too)


KEYS = ("random", "orthogonal")


def _require_keys(keys):
    if keys not in KEYS:
        raise ValueError(f"keys must be one of {KEYS}, got {keys!r}")


def _orthogonal_keys(pairs, d, gen):
    """Unit keys with sum_i k_i k_i^T = max(1, pairs / d) I (float64): the rows of a random
    orthogonal matrix while pairs <= d; beyond, a harmonic frame (row i: cos and sin of
    2 pi i f / pairs for d // 2 distinct random frequencies f, times sqrt(2 / d), and a
    constant 1 / sqrt(d) when d is odd), turned by a random rotation."""
    rotation = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    if pairs <= d:
        return rotation[:pairs]
    frequencies = torch.randperm((pairs - 1) // 2, generator=gen)[:d // 2] + 1
    angles = 2 * math.pi * torch.arange(pairs, dtype=torch.float64)[:, None] * frequencies / pairs
    columns = [torch.cos(angles) * math.sqrt(2 / d), torch.sin(angles) * math.sqrt(2 / d)]
    if d % 2:
        columns.append(torch.full((pairs, 1), 1 / math.sqrt(d), dtype=torch.float64))
    return torch.cat(columns, dim=-1) @ rotation


def recall_task(pairs, d, seed=0, keys="random", dtype=torch.float32):
    """A context of `pairs` key-value pairs followed by one query for each pair, in a random
    order: N = 2 * pairs positions of width d (module docstring).  keys: "random" (random
    unit vectors) or "orthogonal" (orthonormal up to d pairs, a tight frame beyond).
    The same for a seed."""
    require_positive_int("pairs", pairs)
    require_positive_int("d", d)
    _require_keys(keys)
    gen = torch.Generator().manual_seed(seed)

    def unit_vectors():
        x = torch.randn(pairs, d, generator=gen, dtype=torch.float64)
        return x / x.norm(dim=-1, keepdim=True)

    values = unit_vectors().to(dtype)
    keys = (unit_vectors() if keys == "random" else _orthogonal_keys(pairs, d, gen)).to(dtype)
    answers = torch.randperm(pairs, generator=gen)
    zeros = torch.zeros(pairs, d, dtype=dtype)
    return RecallTask(q=torch.cat([zeros, keys[answers]]), k=torch.cat([keys, zeros]),
                      v=torch.cat([values, zeros]), values=values,
                      query_positions=torch.arange(pairs, 2 * pairs), answers=answers)


def recall_outputs(task, method, window=None, sharpness=SHARPNESS, decay=1.0):
    """The outputs (queries, d) of one method at the query positions of `task`.

    method: "softmax" (causal attention, scores scaled by `sharpness`), "window" (causal
    `sparse.window_global_attention` over the last `window` positions, same scale),
    "linear" (causal `linear_attention` with phi = elu + 1, q and k scaled by
    `sharpness`), "linear memory" (causal linear attention without feature map or
    normaliser: sum_{i <= t} (q_t . k_i) v_i), "scan" (`ssm.selective_scan` with x = v,
    b = k, c = q and every decay a = `decay`, by the loop, which equals the parallel scan;
    with decay 1 it equals "linear memory").
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if (window is None) != (method != "window"):
        raise ValueError(f"window must be given for method 'window' and only for it, got "
                         f"window={window!r} with method {method!r}")
    q, k, v = task.q, task.k, task.v
    if method == "softmax":
        out = scaled_dot_product_attention(q, k, v, is_causal=True, scale=sharpness)
    elif method == "window":
        out = sparse.window_global_attention(q, k, v, window, is_causal=True, scale=sharpness)
    elif method == "linear":
        out = linear.linear_attention(q * sharpness, k * sharpness, v, is_causal=True)
    elif method == "linear memory":
        out = linear.linear_attention(q, k, v, is_causal=True, feature_map=None,
                                      normalize=False)
    else:
        decays = torch.full((*v.shape, k.shape[-1]), float(decay), dtype=v.dtype)
        out = ssm.selective_scan(v, decays, k, q, method="sequential")
    return out[task.query_positions]


def decode(task, outputs):
    """The pair each output points to: argmax_i outputs . v_i over the task's values, or
    -1 where an output is exactly 0 (nothing retrieved).  outputs: (queries, d)."""
    require_tensor("outputs", outputs, min_dim=2)
    expected = (len(task.answers), task.values.shape[-1])
    if tuple(outputs.shape) != expected:
        raise ValueError(f"outputs must have shape (queries, d) = {expected}, got "
                         f"{tuple(outputs.shape)}")
    chosen = (outputs @ task.values.to(outputs.dtype).mT).argmax(dim=-1)
    return torch.where((outputs == 0).all(dim=-1), -1, chosen)


def recall_accuracy(task, method, **options):
    """Fraction of the queries whose value `method` retrieves (`recall_outputs` with
    `options`, read by `decode`)."""
    found = decode(task, recall_outputs(task, method, **options))
    return (found == task.answers).double().mean().item()


def measured_crosstalk(task, outputs):
    """Root mean square over the queries of the norm of (output - asked value): what the
    other pairs add to the retrieved value, for a method that returns value + crosstalk
    ("linear memory", "scan"; about 0 for "softmax")."""
    return (outputs - task.values[task.answers]).norm(dim=-1).pow(2).mean().sqrt().item()


def key_overlap(pairs, d, keys="random"):
    """Mean square overlap (k_i . k_j)^2 of two different keys: 1/d for random unit keys;
    0 for orthogonal keys up to d pairs, (pairs/d - 1) / (pairs - 1) beyond (the least
    possible)."""
    require_positive_int("pairs", pairs)
    require_positive_int("d", d)
    _require_keys(keys)
    if keys == "random":
        return 1 / d
    return 0.0 if pairs <= d else (pairs / d - 1) / (pairs - 1)


def predicted_crosstalk(pairs, d, keys="random"):
    """Expected size of the crosstalk sum_{i != j} (k_i . k_j) v_i next to the retrieved
    value's size 1: sqrt((pairs - 1) * `key_overlap`), that is sqrt((pairs - 1) / d) for
    random keys and sqrt(max(0, pairs/d - 1)) for orthogonal ones."""
    return math.sqrt((pairs - 1) * key_overlap(pairs, d, keys))


def predicted_recall(pairs, d, keys="random"):
    """Predicted recall of the d x d linear memory: the chance that the asked value scores
    highest among the `pairs` candidates when `decode` reads the retrieved vector.

    With m = `key_overlap`, the asked value scores 1 + e, e of variance (pairs - 1) m / d;
    each other value scores k_i . k_j + v_i . v_j + crosstalk, variance m + 1/d +
    (pairs - 2) m / d.  Taking the competitors as independent normals, recall =
    E_x[Phi((1 + s x) / sigma)^(pairs - 1)], x standard normal, integrated on a grid.  The
    competitors share the asked key, and real overlaps never pass 1, so the measured
    recall is a little higher (the prediction errs on the pessimistic side).  With no
    crosstalk at all (orthogonal keys, pairs <= d) the asked value always wins: 1.
    """
    overlap = key_overlap(pairs, d, keys)
    if pairs == 1 or overlap == 0:
        return 1.0
    x = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    density = torch.exp(-x**2 / 2) / math.sqrt(2 * math.pi) * (x[1] - x[0])
    spread = math.sqrt((pairs - 1) * overlap / d)
    sigma = math.sqrt(overlap + 1 / d + (pairs - 2) * overlap / d)
    wins = 0.5 * (1 + torch.erf((1 + spread * x) / (sigma * math.sqrt(2))))
    return float((density * wins ** (pairs - 1)).sum())


def predicted_window_recall(task, window):
    """Fraction of the queries whose pair lies inside their window: the query at position
    t sees pair i only if t - i < window (what `sliding_window_mask` allows)."""
    require_positive_int("window", window)
    return ((task.query_positions - task.answers) < window).double().mean().item()


def recall_curves(pair_counts, d, window, seeds=(0, 1, 2), methods=METHODS, keys="random",
                  sharpness=SHARPNESS):
    """Mean recall over `seeds` of each method for each number of pairs: a dict with one
    list per method, plus "predicted" (`predicted_recall`, the linear memory) and
    "predicted window" (`predicted_window_recall`, averaged over the same tasks)."""
    curves = {name: [] for name in (*methods, "predicted", "predicted window")}
    for pairs in pair_counts:
        tasks = [recall_task(pairs, d, seed, keys) for seed in seeds]
        for name in methods:
            options = {"window": window} if name == "window" else {}
            if name in ("softmax", "window", "linear"):
                options["sharpness"] = sharpness
            curves[name].append(sum(recall_accuracy(t, name, **options) for t in tasks)
                                / len(tasks))
        curves["predicted"].append(predicted_recall(pairs, d, keys))
        curves["predicted window"].append(
            sum(predicted_window_recall(t, window) for t in tasks) / len(tasks))
    return curves
