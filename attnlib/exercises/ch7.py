"""Checks for chapter 7: FlashAttention on a GPU."""

import math

import torch

from attnlib import benchmark, cost, hardware
from attnlib.exercises import (
    Wrong,
    call,
    exercise,
    number,
    require_keys,
    same_tensor,
    texts_apart,
    whole_number,
    wrong_prediction,
)

# --- what fits on a T4: a prediction ---------------------------------------------------

#: The setting of the prediction: one sequence, 16 heads of width 64, float16, forward only.
T4_FIT_SETTING = {"batch": 1, "heads": 16, "d": 64, "dtype": torch.float16}


def _t4_bytes():
    return hardware.gpu_spec("Tesla T4").memory_gb * cost.GB


def largest_power_of_two(fits):
    """The largest N = 2^k (k >= 0) for which fits(N) holds; fits must hold at 1."""
    n = 1
    while fits(2 * n):
        n *= 2
    return n


def t4_fit_answer(batch, heads, d, dtype):
    """Largest power-of-two N for naive attention (the N x N scores of every head, nothing
    else counted) and for a fused kernel (q, k, v and the output) on a T4's 16 GB."""
    size, memory = dtype.itemsize, _t4_bytes()
    return {"naive": largest_power_of_two(
                lambda n: cost.score_matrix_bytes(n, heads, 1, batch, dtype) <= memory),
            "fused": largest_power_of_two(lambda n: 4 * batch * heads * n * d * size <= memory)}


@exercise("ch7.t4_fit")
def check_t4_fit(answer):
    expected = t4_fit_answer(**T4_FIT_SETTING)
    require_keys(answer, list(expected), "{'naive': 1024, 'fused': 1024}")
    hints = {
        "naive": "its scores take heads x N^2 x 2 bytes, so doubling N needs four times the "
                 "memory; find the largest power of two whose scores stay under 16 GB",
        "fused": "it never stores the N x N table: q, k, v and the output take 4 x heads x N "
                 "x d x 2 bytes, linear in N",
    }
    needs = {"naive": lambda n: cost.score_matrix_bytes(n, T4_FIT_SETTING["heads"],
                                                       dtype=T4_FIT_SETTING["dtype"]),
             "fused": lambda n: 4 * T4_FIT_SETTING["heads"] * n * T4_FIT_SETTING["d"] * 2}
    for key in expected:
        got = whole_number(answer[key], f"{key} (a sequence length)")
        if got != expected[key]:
            verdict = (f"does not fit: it needs {needs[key](got) / 1e9:,.1f} GB"
                       if got > expected[key] else "is not the largest N that fits")
            wrong_prediction("ch7.t4_fit", f"{key}: {got:,} {verdict}: {hints[key]}",
                             f"naive {expected['naive']:,}, fused {expected['fused']:,}")
    ratio = expected["fused"] // expected["naive"]
    return (f"naive attention stops at N = {expected['naive']:,}, a fused kernel runs to "
            f"{expected['fused']:,}: {ratio} times longer texts on the same 16 GB.")


# --- TFLOP/s and percent of peak from a measurement ------------------------------------

#: The measurements the check feeds the learner's function: (n, d, heads, batch, causal,
#: backward, seconds, peak TFLOP/s).
MEASUREMENTS = [
    (4096, 64, 16, 2, False, False, 0.0035, 989.5),
    (8192, 128, 16, 1, True, False, 0.011, 989.5),
    (2048, 64, 8, 4, True, True, 0.0042, 65.0),
]


def reference_tflops(n, d, heads, batch, causal, backward, seconds, peak_tflops):
    """The achieved TFLOP/s (chapter 7's count: attention_flops, times 3.5 with the
    backward) and its percent of the peak."""
    case = benchmark.Case("any", "float16", d, causal, backward)
    tflops = benchmark.case_flops(case, n, benchmark.Setting(heads=heads, batch=batch))
    tflops = tflops / seconds / 1e12
    return tflops, 100 * tflops / peak_tflops


def _tflops_mistakes(n, d, heads, batch, causal, backward, seconds, peak):
    right, _ = reference_tflops(n, d, heads, batch, causal, backward, seconds, peak)
    mistakes = [
        (right * 1000, "that is GFLOP/s: one TFLOP is 10^12 FLOPs"),
        (right / 2, "attention does 4 N^2 d FLOPs per head, two products of 2 N^2 d"),
        (right / (batch * heads), "count every head of every sequence: times batch x heads"),
        (right / 1000, "the time is given in seconds: dividing by milliseconds gives 1000 "
                       "times too little"),
    ]
    if causal:
        mistakes.append((2 * right, "with a causal mask only half the pairs are computed: "
                                    "half the FLOPs"))
    if backward:
        mistakes.append((right / 3.5, "forward and backward do 3.5 times the forward's FLOPs "
                                      "(the backward's five products against two)"))
    return mistakes


@exercise("ch7.tflops")
def check_tflops(my_tflops):
    for n, d, heads, batch, causal, backward, seconds, peak in MEASUREMENTS:
        described = (f"N = {n}, d = {d}, {heads} heads, batch {batch}, "
                     f"{'causal' if causal else 'full'}, "
                     f"{'forward + backward' if backward else 'forward'}, "
                     f"{seconds * 1e3:g} ms, peak {peak:g} TFLOP/s")
        got = call(my_tflops, n, d, heads, batch, causal, backward, seconds, peak,
                   called_with=described)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"return the two numbers (TFLOP/s, percent of peak), got "
                        f"{type(got).__name__}.")
        tflops, percent = (number(g, what) for g, what in zip(got, ("TFLOP/s", "the percent"),
                                                               strict=True))
        right_tflops, right_percent = reference_tflops(n, d, heads, batch, causal, backward,
                                                       seconds, peak)
        if not math.isclose(tflops, right_tflops, rel_tol=1e-6):
            hint = next((why for wrong, why in _tflops_mistakes(
                n, d, heads, batch, causal, backward, seconds, peak)
                if math.isclose(tflops, wrong, rel_tol=1e-6)), None)
            expected, yours = texts_apart(right_tflops, tflops)
            raise Wrong(f"for {described} expected {expected} TFLOP/s, got {yours}"
                        f"{': ' + hint if hint else ''}.")
        if math.isclose(percent, right_percent / 100, rel_tol=1e-6):
            raise Wrong(f"for {described} the share is right but as a fraction: multiply by "
                        "100 for a percentage.")
        if not math.isclose(percent, right_percent, rel_tol=1e-6):
            expected, yours = texts_apart(right_percent, percent)
            raise Wrong(f"for {described} expected {expected}% of the peak, got {yours}%: "
                        "divide the TFLOP/s by the peak, times 100.")
    return ("the FLOPs of the work done, over the time, against the device's published peak: "
            "the course's benchmark reports exactly these two numbers.")


# --- the kernel with your own blocks ---------------------------------------------------

#: The setting: a T4 (64 KiB of shared memory per block), head dim 128, float16, key
#: blocks of 32 with 2 stages in flight.
T4_BLOCKS_SETTING = {"d": 128, "block_k": 32, "num_stages": 2, "dtype": torch.float16,
                     "shared_memory": 64 * 1024}


def largest_block_q(d, block_k, num_stages, dtype, shared_memory):
    """The largest power-of-two query block >= 16 whose program fits in `shared_memory`."""
    from attnlib.triton_attention import shared_memory_bytes

    def fits(block_q):
        return shared_memory_bytes(block_q, block_k, num_stages, d, d, dtype) <= shared_memory

    return largest_power_of_two(fits) if fits(16) else None


def _interpreter_case():
    gen = torch.Generator().manual_seed(7)
    q, k = (torch.randn(1, 2, 150, 128, generator=gen, dtype=torch.float16) for _ in range(2))
    return q, k, torch.randn(1, 2, 150, 128, generator=gen, dtype=torch.float16)


@exercise("ch7.t4_blocks")
def check_t4_blocks(block_q):
    from attnlib.triton_attention import shared_memory_bytes, triton, triton_attention

    setting = T4_BLOCKS_SETTING
    expected = largest_block_q(**setting)
    got = whole_number(block_q, "block_q (a number of queries)")
    if got < 16 or got & (got - 1):
        raise Wrong(f"block_q = {got} cannot be a block of the kernel: tl.arange and tl.dot "
                    "need a power of two, at least 16.")
    needed = shared_memory_bytes(got, setting["block_k"], setting["num_stages"], setting["d"],
                                 setting["d"], setting["dtype"])
    if needed > setting["shared_memory"]:
        raise Wrong(f"block_q = {got} needs {needed:,} bytes of shared memory (2 bytes x "
                    f"(block_q x d + stages x block_k x 2d)), more than the T4's "
                    f"{setting['shared_memory']:,}.")
    if got != expected:
        raise Wrong(f"block_q = {got} fits ({needed:,} bytes), but a larger power of two does "
                    "too: the larger the query block, the fewer times K and V are read.")
    if triton is None:
        return (f"{got} queries by {setting['block_k']} keys use {needed:,} of the T4's "
                f"{setting['shared_memory']:,} bytes. (Triton is not installed here, so the "
                "kernel was not run with them: pip install triton.)")
    q, k, v = _interpreter_case()
    out = triton_attention(q, k, v, is_causal=True, block_q=got,
                           block_k=setting["block_k"], num_stages=setting["num_stages"])
    reference = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True)
    same_tensor(out.float(), reference, "the kernel's output with your blocks (N = 150, causal)",
                atol=2e-3, rtol=2e-3)
    return (f"{got} queries by {setting['block_k']} keys use {needed:,} of the T4's "
            f"{setting['shared_memory']:,} bytes, and the kernel with these blocks still "
            "equals PyTorch (checked in Triton's interpreter).")
