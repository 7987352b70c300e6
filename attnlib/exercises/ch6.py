"""Checks for chapter 6: FlashAttention from scratch."""

import math

import torch

from attnlib import flash
from attnlib.exercises import Wrong, call, exercise, same_tensor

#: The setting of the block-counting exercise: a causal mask over N tokens, square tiles.
CAUSAL_BLOCKS_SETTING = {"N": 1000, "block": 128}


@exercise("ch6.causal_blocks")
def check_causal_blocks(answer):
    n, block = CAUSAL_BLOCKS_SETTING["N"], CAUSAL_BLOCKS_SETTING["block"]
    per_side = math.ceil(n / block)
    computed = len(flash.block_schedule(n, n, block, block, is_causal=True))
    expected = {"computed": computed, "skipped": per_side**2 - computed}
    if not isinstance(answer, dict) or set(answer) != set(expected):
        raise Wrong("answer with a dict {'computed': ..., 'skipped': ...}, "
                    f"got {answer!r}.")
    try:
        got = {key: int(value) for key, value in answer.items()}
    except (TypeError, ValueError):
        raise Wrong(f"the counts should be whole numbers, got {answer!r}.") from None
    if got["computed"] + got["skipped"] != per_side**2:
        raise Wrong(f"there are {per_side} blocks per side ({n} / {block}, rounded up), so "
                    f"{per_side**2} tiles in all, but yours add up to "
                    f"{got['computed'] + got['skipped']}.")
    if got != expected:
        raise Wrong(f"{got['computed']} computed is not right: query block i sees the key "
                    "blocks 0 to i, the diagonal one included, so count 1 + 2 + ... for "
                    f"the {per_side} query blocks.")
    return (f"{computed} of {per_side**2} tiles are computed ({per_side} of them masked, on "
            f"the diagonal): a causal mask saves almost half of the work.")


def _reference_stream(rows):
    """(m, ell) after each score of `rows` (R, n), in float64 with plain Python."""
    states = []
    for j in range(rows.shape[1]):
        seen = rows[:, : j + 1].double()
        m = seen.max(dim=1).values
        states.append((m, torch.exp(seen - m[:, None]).sum(dim=1)))
    return states


@exercise("ch6.online_update")
def check_online_update(my_online_update):
    rows = torch.tensor([[1.0, 3.0, 2.0, 5.0, 0.0],
                         [800.0, 805.0, 790.0, 810.0, 809.0],   # exp alone would overflow
                         [-2.0, -1.0, -3.0, -0.5, -4.0]])
    m = torch.full((3,), -math.inf)
    ell = torch.zeros(3)
    for j, (expected_m, expected_ell) in enumerate(_reference_stream(rows)):
        scores = ", ".join(f"{x:g}" for x in rows[1, : j + 1].tolist())
        got = call(my_online_update, m, ell, rows[:, j],
                   called_with=f"m, ell and the next scores {rows[:, j].tolist()}")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"return the pair (m, ell), got {type(got).__name__}.")
        m, ell = got
        same_tensor(m, expected_m.float(),
                    f"m after {j + 1} score(s) (the running maximum)")
        if isinstance(ell, torch.Tensor) and not torch.isfinite(ell).all():
            raise Wrong(f"ell overflowed after the scores {scores} of the second row: subtract "
                        "the running maximum before taking exp.")
        try:
            same_tensor(ell, expected_ell.float(), f"ell after {j + 1} score(s)", rtol=1e-5)
        except Wrong as wrong:
            hint = ("after the first score, ell = exp(x - m) = 1" if j == 0 else
                    "when the maximum grows, the old sum must be rescaled by exp(m_old - m_new)")
            raise Wrong(f"{str(wrong)[:-1]}: {hint}.") from None
    return "two numbers per row are all the state a softmax needs, whatever the length."


def _state(batch, rows, d_v, gen):
    m = torch.randn(batch, rows, 1, generator=gen, dtype=torch.float64)
    ell = torch.rand(batch, rows, 1, generator=gen, dtype=torch.float64) + 1
    return m, ell, torch.randn(batch, rows, d_v, generator=gen, dtype=torch.float64)


@exercise("ch6.block_step")
def check_block_step(my_block_step):
    gen = torch.Generator().manual_seed(6)
    scores = torch.randn(2, 4, 10, generator=gen, dtype=torch.float64) * 3
    v = torch.randn(2, 10, 3, generator=gen, dtype=torch.float64)
    m0 = torch.full((2, 4, 1), -math.inf, dtype=torch.float64)
    first = (m0, torch.zeros_like(m0), torch.zeros(2, 4, 3, dtype=torch.float64))
    cases = [("the first block (m = -inf, ell = 0, acc = 0) with scores (2, 4, 6)", first,
              scores[..., :6], v[:, :6]),
             ("a later block with scores (2, 4, 4)", _state(2, 4, 3, gen), scores[..., 6:],
              v[:, 6:])]
    for description, state, s_block, v_block in cases:
        args = [t.clone() for t in (*state, s_block, v_block)]
        got = call(my_block_step, *args, called_with=description)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise Wrong(f"return the triple (m, ell, acc), got {type(got).__name__}.")
        expected = flash.block_step(*(t.clone() for t in (*state, s_block, v_block)))
        for name, g, e in zip(("m", "ell", "acc"), got, expected, strict=True):
            same_tensor(g, e, f"{name} after {description}")
    return "rescale the old state by exp(m_old - m_new), then add the new block's share."


def _parts(gen, n_keys_first):
    q = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    k, v = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64), torch.randn(
        2, 9, 3, generator=gen, dtype=torch.float64)
    whole = flash.flash_attention(q, k, v, return_lse=True)
    first = flash.flash_attention(q, k[:, :n_keys_first], v[:, :n_keys_first], return_lse=True)
    second = flash.flash_attention(q, k[:, n_keys_first:], v[:, n_keys_first:],
                                   return_lse=True)
    return whole, first, second


@exercise("ch6.merge")
def check_merge(my_merge):
    gen = torch.Generator().manual_seed(7)
    for n_first, description in [(4, "keys split 4 + 5"), (9, "keys split 9 + 0 (no keys)")]:
        (out, lse), (out1, lse1), (out2, lse2) = _parts(gen, n_first)
        got = call(my_merge, out1, lse1, out2, lse2, called_with=description)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"return the pair (out, lse), got {type(got).__name__}.")
        same_tensor(got[1], lse, f"lse with the {description}")
        same_tensor(got[0], out, f"the output with the {description}")
    return ("each part's output is weighted by its share of the normaliser, exp(lse_part - "
            "lse): this is how a long sequence is split across processors.")
