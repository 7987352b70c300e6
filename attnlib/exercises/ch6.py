"""Checks for chapter 6: FlashAttention from scratch."""

import math

import torch

from attnlib import flash
from attnlib.exercises import (
    Wrong,
    call,
    exercise,
    matches,
    refuse_library,
    require_parts,
    same_tensor,
    whole_number,
    wrong_prediction,
)

#: The setting of the tile-counting exercise: a causal mask over N tokens, tiles of
#: block_q queries by block_k keys (the last block of each side is shorter).
CAUSAL_BLOCKS_SETTING = {"N": 1000, "block_q": 128, "block_k": 64}


def _causal_blocks_hint(got, n, block_q, block_k):
    """A sentence on a wrong count of tiles that does not give the right count."""
    query_blocks, key_blocks = math.ceil(n / block_q), math.ceil(n / block_k)
    total = query_blocks * key_blocks
    if got["computed"] in (n * (n + 1) // 2, n * (n - 1) // 2) or sum(got.values()) == n * n:
        return (f"count tiles, not scores: a tile is a block of {block_q} queries by "
                f"{block_k} keys, and it is computed or skipped as a whole")
    if sum(got.values()) != total:
        return (f"there are {query_blocks} query blocks ({n} / {block_q}, rounded up) and "
                f"{key_blocks} key blocks ({n} / {block_k}, rounded up), so {total} tiles "
                f"in all, but yours add up to {sum(got.values())}")
    square = [t * (t + 1) // 2 for t in (query_blocks, key_blocks)]
    hint = (f"the tiles are not square, so the diagonal crosses {block_q // block_k} key "
            f"blocks of {block_k} in each query block of {block_q}; "
            if got["computed"] in square else "")
    return (f"{got['computed']} computed is not right: {hint}query block r (queries "
            f"{block_q}r to {block_q}r + {block_q - 1}) sees every key block whose "
            "first key is at most its last query; count them for each query block "
            f"(the last one ends at query {n - 1})")


@exercise("ch6.causal_blocks")
def check_causal_blocks(answer):
    n, block_q, block_k = (CAUSAL_BLOCKS_SETTING[key] for key in ("N", "block_q", "block_k"))
    query_blocks, key_blocks = math.ceil(n / block_q), math.ceil(n / block_k)
    total = query_blocks * key_blocks
    schedule = flash.block_schedule(n, n, block_q, block_k, is_causal=True)
    expected = {"computed": len(schedule), "skipped": total - len(schedule)}
    if not isinstance(answer, dict) or set(answer) != set(expected):
        raise Wrong("answer with a dict {'computed': ..., 'skipped': ...}, "
                    f"got {answer!r}.")
    got = {key: whole_number(value, f"{key} (a count of tiles)") for key, value in answer.items()}
    if got != expected:
        wrong_prediction("ch6.causal_blocks", _causal_blocks_hint(got, n, block_q, block_k),
                         f"{expected['computed']} computed and {expected['skipped']} skipped")
    masked = sum(block.masked for block in schedule)
    return (f"{expected['computed']} of {total} tiles are computed ({masked} of them masked, "
            f"crossed by the diagonal) and {expected['skipped']} skipped: close to half, as "
            "with square tiles.")


# --- FlashAttention-1's update: the output kept normalised ------------------------------

#: The three queries streamed through the update, one score at a time (the second one's
#: scores overflow exp in float32 unless the running maximum is subtracted first; the
#: third one's third key is masked, its score -inf).
NORMALISED_UPDATE_SCORES = [[1.0, 3.0, 2.0, 5.0, 0.0],
                            [800.0, 805.0, 790.0, 810.0, 809.0],
                            [-2.0, -1.0, -math.inf, -0.5, -4.0]]


def _as_tensor(value):
    """A Python number becomes a 0-d float32 tensor (math.exp returns floats); else as is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    return value


def _non_finite_hint(what, t, query, scores):
    seen = ", ".join(f"{x:g}" for x in scores[:t])
    where = f"{what} is not finite after the score(s) {seen} of query {query}"
    if max(scores[:t]) > 80:  # exp overflows float32 above 88
        return f"{where}: subtract the running maximum before taking exp."
    if t == 1:
        return (f"{where}: exp(m - m') with m = -inf must give 0, so check the sign of the "
                "exponent and that it uses the new maximum m'.")
    return (f"{where}: with m' the new maximum, exp(m - m') and exp(x - m') are at most 1, "
            "so nothing should overflow.")


@exercise("ch6.normalised_update")
def check_normalised_update(my_normalised_update):
    gen = torch.Generator().manual_seed(6)
    for query, scores in enumerate(NORMALISED_UPDATE_SCORES):
        values = torch.randn(len(scores), 3, generator=gen)
        m, ell, o = torch.tensor(-math.inf), torch.tensor(0.0), torch.zeros(3)
        for t in range(1, len(scores) + 1):
            x = torch.tensor(scores[t - 1])
            got = call(my_normalised_update, m, ell, o, x, values[t - 1],
                       called_with=f"query {query}'s score {scores[t - 1]:g} (key {t})")
            m, ell, o = (_as_tensor(part) for part in require_parts(got, ("m", "ell", "o")))
            seen = torch.tensor(scores[:t], dtype=torch.float64)
            expected_m = seen.max()
            weights = torch.exp(seen - expected_m)
            expected_ell = weights.sum()
            expected_o = (weights / expected_ell) @ values[:t].double()
            after = f"after {t} key(s) of query {query}"
            same_tensor(m, expected_m.float(), f"m {after}",
                        hint="m is the largest score so far, max(m, x)")
            for name, got_part, expected_part in (("ell", ell, expected_ell),
                                                  ("o", o, expected_o)):
                if isinstance(got_part, torch.Tensor) and not torch.isfinite(got_part).all():
                    raise Wrong(_non_finite_hint(name, t, query, scores))
                if name == "ell":
                    hint = ("after the first key, ell = exp(x - m') = 1" if t == 1 else
                            "when the maximum grows, the old sum must be rescaled by "
                            "exp(m - m')")
                else:
                    hint = ("after the first key, o is that key's value v (its weight is 1)"
                            if t == 1 else
                            "o is normalised, so the old output carries the weight "
                            "exp(m - m') ell / ell' in the new one and v the weight "
                            "exp(x - m') / ell'")
                same_tensor(got_part, expected_part.float(), f"{name} {after}", hint=hint)
    return ("this is FlashAttention-1's update: it divides by ell at every step, where "
            "FlashAttention-2 keeps the output unnormalised and divides once at the end.")


# --- one block step --------------------------------------------------------------------


def _state(batch, rows, d_v, gen, m_offset=0.0):
    m = torch.randn(batch, rows, 1, generator=gen, dtype=torch.float64) + m_offset
    ell = torch.rand(batch, rows, 1, generator=gen, dtype=torch.float64) + 1
    return m, ell, torch.randn(batch, rows, d_v, generator=gen, dtype=torch.float64)


_FIRST_BLOCK_NAN = ("on a first block the rescale factor exp(m - m') must be exp(-inf) = 0; "
                    "exp(m' - m) is inf, and inf * 0 is NaN")
_NO_KEY_NAN = ("in the row that sees no key m' = -inf too, and exp(scores - m') = "
               "exp(-inf - (-inf)) is NaN; subtract 0 where m' = -inf (the chapter's _finite), "
               "so that the row keeps m = -inf, ell = 0 and acc = 0")


def _block_step_cases():
    """(description, (m, ell, acc), scores, v_block, what NaN means there): batch 2,
    4 queries, d_v = 3."""
    gen = torch.Generator().manual_seed(6)
    scores = torch.randn(2, 4, 14, generator=gen, dtype=torch.float64) * 3
    v = torch.randn(2, 14, 3, generator=gen, dtype=torch.float64)
    m0 = torch.full((2, 4, 1), -math.inf, dtype=torch.float64)
    first = (m0, torch.zeros_like(m0), torch.zeros(2, 4, 3, dtype=torch.float64))
    masked_later, masked_first = scores[..., 6:10].clone(), scores[..., :6].clone()
    masked_later[1, 2] = masked_first[0, 1] = -math.inf
    return [("the first block (m = -inf, ell = 0, acc = 0) with scores (2, 4, 6)", first,
             scores[..., :6], v[:, :6], _FIRST_BLOCK_NAN),
            ("a later block with scores (2, 4, 4), query 2 of batch 1 seeing none of its keys",
             _state(2, 4, 3, gen), masked_later, v[:, 6:10], None),
            ("a later block whose scores all lie below the old maximum m (about 30)",
             _state(2, 4, 3, gen, m_offset=30.0), scores[..., 10:], v[:, 10:], None),
            ("the first block, query 1 of batch 0 seeing none of its keys (its scores all -inf)",
             first, masked_first, v[:, :6], _NO_KEY_NAN)]


def _rescale_mistakes(m, ell, acc, scores, v_block):
    """(ell, acc) of the usual wrong rescalings of a later block, with the sentence naming
    each; m is finite."""
    m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
    p = torch.exp(scores - m_new)
    rescale, new_ell, new_acc = torch.exp(m - m_new), p.sum(dim=-1, keepdim=True), p @ v_block
    why = ("when the maximum grows from m to m', the old sums were taken relative to m and "
           "must be multiplied by the rescale factor exp(m - m')")
    return [
        ((ell + new_ell, acc + new_acc), f"neither ell nor acc is rescaled: {why}"),
        ((rescale * ell + new_ell, acc + new_acc), f"acc is not rescaled, ell is: {why}"),
        ((ell + new_ell, rescale * acc + new_acc), f"ell is not rescaled, acc is: {why}"),
        ((ell / rescale + new_ell, acc / rescale + new_acc),
         "your rescale factor is upside down: it is exp(m - m'), the old maximum minus the new "
         "one, at most 1; exp(m' - m) is its inverse"),
    ]


def _same_parts(got, known):
    return all(matches(g, k) for g, k in zip(got, known, strict=True))


def _has_nan(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point() and bool(t.isnan().any())


@exercise("ch6.block_step")
def check_block_step(my_block_step):
    refuse_library(my_block_step, (flash.block_step,), "with maximum, exp and sum")
    for description, state, s_block, v_block, why_nan in _block_step_cases():
        args = [t.clone() for t in (*state, s_block, v_block)]
        got = call(my_block_step, *args, called_with=description)
        got = require_parts(got, ("m", "ell", "acc"))
        expected = flash.block_step(*(t.clone() for t in (*state, s_block, v_block)))
        same_tensor(got[0], expected[0], f"m after {description}",
                    hint="m must be max(m, rowmax(scores)), the old maximum included")
        if why_nan and any(_has_nan(part) for part in got[1:]):
            raise Wrong(f"with {description}, your ell or acc has NaN: {why_nan}.")
        if torch.isfinite(state[0]).all():  # a later block: name a wrong rescaling
            sentence = next((sentence for wrong, sentence in _rescale_mistakes(*state, s_block,
                                                                               v_block)
                             if _same_parts(got[1:], wrong)
                             and not _same_parts(expected[1:], wrong)), None)
            if sentence:
                raise Wrong(f"with {description}, {sentence}.")
        for name, g, e in zip(("ell", "acc"), got[1:], expected[1:], strict=True):
            same_tensor(g, e, f"{name} after {description}")
    return "rescale the old state by exp(m_old - m_new), then add the new block's share."


# --- merging partial results -----------------------------------------------------------


def _parts(gen, n_keys_first, shift=0.0):
    """(out, lse) of attention over all 9 keys, over the first n_keys_first, and over the
    rest; every score raised by `shift` (through an extra dimension of q and k)."""
    q = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 3, 9, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 3, 9, 2, generator=gen, dtype=torch.float64)
    q = torch.cat([q / 2, torch.ones(2, 3, 5, 1, dtype=torch.float64)], dim=-1)
    k = torch.cat([k, torch.full((2, 3, 9, 1), shift, dtype=torch.float64)], dim=-1)

    def attend(keys):
        return flash.flash_attention(q, k[..., keys, :], v[..., keys, :], scale=1.0,
                                     return_lse=True)

    return (attend(slice(None)), attend(slice(None, n_keys_first)),
            attend(slice(n_keys_first, None)))


@exercise("ch6.merge")
def check_merge(my_merge):
    gen = torch.Generator().manual_seed(7)
    for n_first, shift, description in [
            (4, 0.0, "keys split 4 + 5, batch dimensions (2, 3)"),
            (9, 0.0, "keys split 9 + 0 (no keys), batch dimensions (2, 3)"),
            (4, 1000.0, "keys split 4 + 5, scores near 1000, batch dimensions (2, 3)")]:
        (out, lse), (out1, lse1), (out2, lse2) = _parts(gen, n_first, shift)
        got = call(my_merge, out1, lse1, out2, lse2, called_with=description)
        got = require_parts(got, ("out", "lse"))
        if isinstance(got[1], torch.Tensor) and (got[1] == math.inf).any():
            raise Wrong(f"lse with the {description} overflowed to infinity: add the two "
                        "normalisers in log space, with torch.logaddexp or by subtracting "
                        "the larger lse before exp.")
        same_tensor(got[1], lse, f"lse with the {description}")
        same_tensor(got[0], out, f"the output with the {description}",
                    hint="weight each part by exp(lse_part - lse), its share of the whole "
                         "normaliser")
    return ("each part's output is weighted by its share of the normaliser, exp(lse_part - "
            "lse): this is how a long sequence is split across processors.")
