import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attnlib.attention import scaled_dot_product_attention
from attnlib.flash import (
    accumulation_dtype,
    block_schedule,
    block_step,
    flash_attention,
    flash_steps,
    key_blocks,
    largest_block_q,
    naive_io,
    naive_steps,
    online_attention,
    online_softmax,
    online_update,
    safe_softmax,
    tile_scores,
    tiled_backward,
    tiled_forward,
    tiled_io,
)
from tests.low_precision import assert_as_accurate_as_pytorch, large_scores_case
from tests.reference import random_qkv, scores64


def random_case(seed, dtype=torch.float32):
    """Random shapes (`random_qkv`: leading dims that broadcast, L != S, d_v != d_k), ragged
    last blocks, causal or not."""
    q, k, v, rng = random_qkv(seed, dtype, max_n=70, max_d=16)
    options = {"is_causal": rng.random() < 0.5, "block_q": rng.randint(1, 24),
               "block_k": rng.randint(1, 24), "scale": rng.choice([None, 0.3, 2.0])}
    return q, k, v, options


@pytest.mark.parametrize("seed", range(60))
def test_equals_naive_and_pytorch_in_float32(seed):
    q, k, v, options = random_case(seed)
    got = flash_attention(q, k, v, **options)
    torch_options = {"is_causal": options["is_causal"], "scale": options["scale"]}
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, **torch_options),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, scaled_dot_product_attention(q, k, v, **torch_options),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("n_q", "n_k"), [(600, 600), (300, 777), (513, 257)])
def test_default_blocks_with_ragged_last_blocks(n_q, n_k, is_causal):
    gen = torch.Generator().manual_seed(n_q + n_k)
    q = torch.randn(1, 2, n_q, 64, generator=gen)
    k, v = (torch.randn(1, 2, n_k, 64, generator=gen) for _ in range(2))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(flash_attention(q, k, v, is_causal=is_causal), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(10))
def test_lse_is_the_log_of_each_rows_normaliser(seed):
    q, k, v, options = random_case(seed, torch.float64)
    out, lse = flash_attention(q, k, v, return_lse=True, **options)
    scores = scores64(q, k, is_causal=options["is_causal"], scale=options["scale"])
    expected = torch.logsumexp(scores, dim=-1)
    torch.testing.assert_close(lse, expected.expand_as(lse), rtol=1e-12, atol=1e-12)
    weights = torch.exp(scores - expected.unsqueeze(-1))  # the softmax, from lse alone
    torch.testing.assert_close(out, (weights @ v).expand_as(out), rtol=1e-12, atol=1e-12)


def test_huge_scores_stay_finite_and_accurate():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 37, 8, generator=gen) for _ in range(3))
    got = flash_attention(q * 300, k, v, block_q=8, block_k=5)  # scores of several hundred
    assert torch.isfinite(got).all()
    expected = F.scaled_dot_product_attention(q.double() * 300, k.double(), v.double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_no_keys_gives_zero_output_minus_infinite_lse_and_zero_gradient():
    q = torch.randn(2, 5, 4, requires_grad=True)
    k, v = torch.randn(2, 0, 4), torch.randn(2, 0, 3)
    out, lse = flash_attention(q, k, v, return_lse=True)
    assert out.tolist() == scaled_dot_product_attention(q, k, v).tolist() == [[[0.0] * 3] * 5] * 2
    assert (lse == -math.inf).all()
    out.sum().backward()
    assert q.grad.tolist() == torch.zeros(2, 5, 4).tolist()


def test_no_queries_gives_an_empty_output():
    out, lse = flash_attention(torch.randn(3, 0, 4), torch.randn(3, 5, 4), torch.randn(3, 5, 2),
                               is_causal=True, return_lse=True)
    assert out.shape == (3, 0, 2) and lse.shape == (3, 0)


def test_nan_input_propagates():
    q = torch.tensor([[float("nan"), 0.0], [1.0, 0.0]])
    out = flash_attention(q, torch.ones(3, 2), torch.ones(3, 2), block_q=1)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


def visible(i, j):
    return j <= i


@pytest.mark.parametrize("seed", range(30))
def test_causal_schedule_keeps_exactly_the_tiles_with_a_visible_pair(seed):
    rng = random.Random(seed)
    n_q, n_k, block_q, block_k = (rng.randint(1, 30) for _ in range(4))
    kept = {(b.q_start, b.k_start): b.masked
            for b in block_schedule(n_q, n_k, block_q, block_k, is_causal=True)}
    for q_start in range(0, n_q, block_q):
        for k_start in range(0, n_k, block_k):
            pairs = [(i, j) for i in range(q_start, min(q_start + block_q, n_q))
                     for j in range(k_start, min(k_start + block_k, n_k))]
            if any(visible(i, j) for i, j in pairs):
                assert kept.pop((q_start, k_start)) == (not all(visible(i, j) for i, j in pairs))
    assert not kept
    everything = block_schedule(n_q, n_k, block_q, block_k)
    assert len(everything) == math.ceil(n_q / block_q) * math.ceil(n_k / block_k)
    assert not any(b.masked for b in everything)


@pytest.mark.parametrize("is_causal", [False, True])
def test_matrix_products_cover_only_the_visible_tiles(is_causal):
    n, d, block = 50, 8, 8
    q, k, v = (torch.randn(n, d) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        flash_attention(q, k, v, is_causal=is_causal, block_q=block, block_k=block)
    tiles = math.ceil(n / block)
    if is_causal:  # the tiles on and below the diagonal, counted by area
        area = sum(min(block, n - qi * block) * min(block, n - kj * block)
                   for qi in range(tiles) for kj in range(qi + 1))
    else:
        area = n * n
    assert counter.get_total_flops() == 2 * area * (d + d)  # Q K^T and P V, 2 FLOPs per MAC


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("n_q", "n_k"), [(7, 7), (9, 5), (4, 11)])
def test_gradcheck_in_float64_through_output_and_lse(n_q, n_k, is_causal):
    gen = torch.Generator().manual_seed(n_q * n_k)
    q = torch.randn(2, n_q, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, n_k, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, n_k, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def both(q, k, v):
        return flash_attention(q, k, v, is_causal=is_causal, block_q=3, block_k=4,
                               return_lse=True)

    assert torch.autograd.gradcheck(both, (q, k, v))


@pytest.mark.parametrize("seed", range(8))
def test_float32_gradients_match_autograd_through_naive_attention(seed):
    q, k, v, options = random_case(seed)
    grad_out = torch.randn(torch.broadcast_shapes(q.shape[:-1], k.shape[:-2] + (1,))
                           + v.shape[-1:], generator=torch.Generator().manual_seed(seed))
    flash_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    naive_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    flash_attention(*flash_inputs, **options).backward(grad_out)
    scaled_dot_product_attention(*naive_inputs, is_causal=options["is_causal"],
                                 scale=options["scale"]).backward(grad_out)
    for ours, naive in zip(flash_inputs, naive_inputs, strict=True):
        torch.testing.assert_close(ours.grad, naive.grad, rtol=1e-4, atol=1e-5)


def test_gradient_only_for_the_inputs_that_ask_for_it():
    q = torch.randn(6, 4, requires_grad=True)
    k, v = torch.randn(6, 4), torch.randn(6, 4)
    flash_attention(q, k, v, block_q=4, block_k=4).sum().backward()
    assert q.grad is not None and k.grad is None and v.grad is None


# --- float16 and bfloat16: float32 statistics, as in FlashAttention ----------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("d", [16, 32, 64])
@pytest.mark.parametrize("n", [1, 2, 5, 17, 128])
def test_low_precision_is_as_accurate_as_pytorch_against_float64(n, d, is_causal, dtype):
    def attention(q, k, v, is_causal):
        return flash_attention(q, k, v, is_causal=is_causal, block_q=16, block_k=32)

    assert_as_accurate_as_pytorch(attention, n, d, is_causal, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 64])
@pytest.mark.parametrize("seed", range(2))
def test_one_key_gives_zero_gradients_for_q_and_k(seed, d, dtype):
    # softmax over a single key is 1 whatever q and k are: dq = dk = 0 exactly; with
    # float16 statistics they came out as large as 0.02 to 0.17 in these cases
    q, k, v, grad_out = large_scores_case(1, d, dtype, seed=3 * seed)
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*inputs)
    out.backward(grad_out)
    assert torch.equal(out, v)
    assert inputs[0].grad.abs().max() < 1e-4 and inputs[1].grad.abs().max() < 1e-4
    assert torch.equal(inputs[2].grad, grad_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lse_is_float32_and_exact_for_low_precision_inputs(dtype):
    q, k, v, _ = large_scores_case(70, 32, dtype)
    out, lse = flash_attention(q, k, v, is_causal=True, return_lse=True, block_q=16, block_k=16)
    assert lse.dtype == accumulation_dtype(dtype) == torch.float32
    expected = torch.logsumexp(scores64(q, k, is_causal=True), dim=-1)
    torch.testing.assert_close(lse.double(), expected, rtol=1e-6, atol=1e-5)


def test_accumulation_dtype_is_float32_for_half_types_only():
    assert [accumulation_dtype(t) for t in (torch.float16, torch.bfloat16, torch.float32,
                                            torch.float64)] == [torch.float32, torch.float32,
                                                                torch.float32, torch.float64]
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype.*torch.int64"):
        accumulation_dtype(torch.int64)


def test_float16_running_sum_stalls_where_float32_does_not():
    # the chapter's point, on one row of 4096 keys: in float16, ell stops growing once
    # each new exp(s - m) is below half a unit in the last place of ell
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 4096, generator=gen).half()
    v = torch.randn(4096, 4, generator=gen).half()
    expected = torch.softmax(scores.double(), dim=-1) @ v.double()
    error16 = (online_attention(scores, v).double() - expected).abs().max()
    error32 = (online_attention(scores.float(), v.float()).double() - expected).abs().max()
    assert error16 > 1e-3 and error32 < 1e-6


# --- the pieces as public functions -----------------------------------------------------


def test_tiled_forward_and_backward_are_the_pieces_of_flash_attention():
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(3, 19, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    out, lse = tiled_forward(q, k, v, 0.7, is_causal=True, block_q=4, block_k=6)
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                 scale=0.7))
    torch.testing.assert_close(lse, torch.logsumexp(scores64(q, k, is_causal=True, scale=0.7), -1))
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    grads = tiled_backward(q, k, v, out, lse, grad_out, grad_lse, scale=0.7, is_causal=True,
                           block_q=5, block_k=3)
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    scores = scores64(*inputs[:2], is_causal=True, scale=0.7)
    expected_lse = torch.logsumexp(scores, -1)
    expected_out = torch.softmax(scores, -1) @ inputs[2]
    torch.autograd.backward((expected_out, expected_lse), (grad_out, grad_lse))
    torch.testing.assert_close(grads, tuple(t.grad for t in inputs))


def test_key_blocks_and_tile_scores_build_the_scores_matrix():
    gen = torch.Generator().manual_seed(7)
    q, k = torch.randn(1, 10, 3, generator=gen), torch.randn(1, 13, 3, generator=gen)
    assembled = torch.full((10, 13), -math.inf)
    for block in key_blocks(4, 8, 13, 5, is_causal=True):
        assembled[block.q_start:block.q_end, block.k_start:block.k_end] = tile_scores(q, k,
                                                                                     block)[0]
    expected = scores64(q[0], k[0], is_causal=True, scale=1.0).float()
    torch.testing.assert_close(assembled[4:8], expected[4:8])
    assert [b.k_start for b in key_blocks(4, 8, 13, 5, is_causal=True)] == [0, 5]
    assert [b.k_start for b in key_blocks(4, 8, 13, 5)] == [0, 5, 10]


@pytest.mark.parametrize(
    ("shapes", "words"),
    [(((4, 8), (4, 8), (4, 8)), ["3-D", "(4, 8)"]),
     (((2, 4, 8), (1, 4, 8), (1, 4, 8)), ["one batch size", "(2, 4, 8)", "(1, 4, 8)"])],
)
def test_tiled_forward_refuses_inputs_that_are_not_batched_alike(shapes, words):
    with pytest.raises(ValueError) as info:
        tiled_forward(*(torch.zeros(s) for s in shapes), scale=1.0)
    for word in words:
        assert word in str(info.value)


def test_tiled_backward_names_mismatched_shapes():
    q = torch.zeros(2, 4, 8)
    with pytest.raises(ValueError, match=r"lse shape \(B, L\) = \(2, 4\).*\(2, 5\)"):
        tiled_backward(q, q, q, q, torch.zeros(2, 5), q)


# --- the softmax in three steps --------------------------------------------------------


def rows_with_minus_infinity():
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[0, :4] = -math.inf  # masked entries first: the online max starts at -inf
    x[1, 3:] = -math.inf
    x[2] *= 1e4  # exp(x) alone would overflow
    return x


@pytest.mark.parametrize("softmax", [safe_softmax, online_softmax])
def test_softmax_steps_match_torch(softmax):
    x = rows_with_minus_infinity()
    torch.testing.assert_close(softmax(x), torch.softmax(x, dim=-1), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(softmax(x.float()), torch.softmax(x.float(), dim=-1))


@pytest.mark.parametrize("softmax", [safe_softmax, online_softmax])
def test_softmax_steps_give_zeros_for_an_all_minus_infinity_row(softmax):
    x = torch.tensor([[-math.inf, -math.inf], [0.0, -math.inf]])
    assert softmax(x).tolist() == [[0.0, 0.0], [1.0, 0.0]]
    assert softmax(torch.zeros(3, 0)).shape == (3, 0)


def test_online_update_keeps_the_sum_relative_to_the_running_max():
    x = rows_with_minus_infinity()
    m, ell = torch.full((5,), -math.inf, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for j in range(x.shape[1]):
        m, ell = online_update(m, ell, x[:, j])
        seen = x[:, : j + 1]
        expected_m = seen.max(dim=1).values
        safe_m = torch.where(torch.isinf(expected_m), 0.0, expected_m)
        assert torch.equal(m, expected_m)
        torch.testing.assert_close(ell, torch.exp(seen - safe_m[:, None]).sum(dim=1))


def test_online_attention_is_softmax_times_values_with_broadcasting():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 3, 4, 7, generator=gen, dtype=torch.float64)
    scores[0, 0, 0, :5] = -math.inf
    v = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(online_attention(scores, v), torch.softmax(scores, -1) @ v)
    with pytest.raises(ValueError, match=r"scores has 7 keys .* v has 6"):
        online_attention(scores, torch.zeros(6, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"must broadcast, got scores \(2, 3, 4, 7\)"):
        online_attention(scores, torch.zeros(4, 7, 5, dtype=torch.float64))


def test_block_steps_over_two_halves_equal_one_step_over_all_keys():
    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(2, 3, 10, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 10, 4, generator=gen, dtype=torch.float64)

    def start():
        m = torch.full((2, 3, 1), -math.inf, dtype=torch.float64)
        return m, torch.zeros_like(m), torch.zeros(2, 3, 4, dtype=torch.float64)

    m, ell, acc = block_step(*start(), scores.clone(), v)
    expected_m = scores.amax(-1, keepdim=True)
    assert torch.equal(m, expected_m)
    torch.testing.assert_close(ell, torch.exp(scores - expected_m).sum(-1, keepdim=True))
    torch.testing.assert_close(acc, torch.exp(scores - expected_m) @ v)
    state = block_step(*start(), scores[..., :6].clone(), v[:, :6])
    m2, ell2, acc2 = block_step(*state, scores[..., 6:].clone(), v[:, 6:])
    assert torch.equal(m2, m)
    torch.testing.assert_close((ell2, acc2), (ell, acc))
    torch.testing.assert_close(acc2 / ell2, torch.softmax(scores, -1) @ v)


@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_steps_walk_the_schedule_and_end_at_the_attention_output(is_causal):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(11, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    steps = list(flash_steps(q, k, v, is_causal=is_causal, block_q=4, block_k=3))
    assert [s.block for s in steps] == block_schedule(11, 11, 4, 3, is_causal)
    expected = scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(steps[-1].out, expected)
    scores = scores64(q, k, is_causal=is_causal)
    torch.testing.assert_close(steps[-1].m, scores.amax(-1))
    torch.testing.assert_close(steps[-1].ell, torch.exp(scores - scores.amax(-1, True)).sum(-1))
    for step, following in zip(steps, steps[1:], strict=False):
        if following.block.q_start != step.block.q_start:  # a query block was just finished
            done = slice(0, step.block.q_end)
            torch.testing.assert_close(step.out[done], expected[done])
            assert (step.ell[step.block.q_end:] == 0).all()


# --- traffic to slow memory ------------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "block_q", "block_k"), [(64, 8, 16, 16), (70, 4, 9, 5)])
def test_io_counts_match_a_walk_through_the_algorithms(n, d, block_q, block_k):
    q, k, v = (torch.zeros(n, d) for _ in range(3))
    s = q @ k.T
    p, o = s.softmax(-1), s @ v
    steps = [((q, k), (s,)), ((s,), (p,)), ((p, v), (o,))]  # inputs read, result written
    moved_per_step = [sum(t.numel() for part in step for t in part) for step in steps]
    assert [moved for _, moved in naive_steps(n, d).values()] == moved_per_step
    assert naive_io(n, d) == sum(moved_per_step)
    moved = 0
    for q_start in range(0, n, block_q):
        rows = min(block_q, n - q_start)
        moved += rows * d  # read the query block
        moved += sum(2 * min(block_k, n - k_start) * d for k_start in range(0, n, block_k))
        moved += rows * d  # write its output
    assert tiled_io(n, d, block_q) == moved


def test_naive_steps_count_flops_as_pytorch_does_for_the_products():
    n, d = 24, 8
    q, k, v = (torch.randn(n, d) for _ in range(3))
    counted = []
    for product in (lambda: q @ k.T, lambda: torch.ones(n, n) @ v):
        with FlopCounterMode(display=False) as counter:
            product()
        counted.append(counter.get_total_flops())
    flops = [f for f, _ in naive_steps(n, d).values()]
    assert [flops[0], flops[2]] == counted
    scores = n * n
    assert flops[1] == 5 * scores  # max, subtract, exp, sum, divide: one each per score


@pytest.mark.parametrize(("memory", "d", "block_k"),
                         [(49152, 64, 64), (1000, 8, 16), (100, 64, 64)])
def test_largest_block_q_is_the_largest_that_fits(memory, d, block_k):
    def working_set(b):
        return b * 2 * d + 2 * b + b * block_k + 2 * block_k * d

    best = largest_block_q(memory, d, block_k)
    assert working_set(best + 1) > memory
    assert best == 0 or working_set(best) <= memory


Z = torch.zeros


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "words"),
    [
        ((Z(4, 8), Z(5, 8), Z(5, 3)), {"block_q": 0}, ValueError, ["block_q", ">= 1", "0"]),
        ((Z(4, 8), Z(5, 8), Z(5, 3)), {"block_k": 2.5}, TypeError, ["block_k", "int", "float"]),
        ((Z(4, 8), Z(5, 6), Z(5, 6)), {}, ValueError, ["d_k", "(4, 8)", "(5, 6)"]),
        ((Z(4, 8), Z(5, 8), Z(6, 3)), {}, ValueError, ["k and v", "(5, 8)", "(6, 3)"]),
        ((Z(2, 4, 8), Z(3, 5, 8), Z(3, 5, 3)), {}, ValueError, ["broadcast", "q (2, 4, 8)"]),
        ((Z(4, 8), Z(5, 8), Z(5, 3)), {"scale": "0.5"}, TypeError, ["scale", "str"]),
        ((Z(4, 8, dtype=torch.int64), Z(5, 8), Z(5, 3)), {}, TypeError, ["q", "torch.int64"]),
    ],
)
def test_bad_input_names_the_argument(args, kwargs, error, words):
    with pytest.raises(error) as info:
        flash_attention(*args, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_flash_steps_refuses_batched_input():
    with pytest.raises(ValueError, match=r"one head: .* \(2, 4, 8\)"):
        next(flash_steps(Z(2, 4, 8), Z(2, 5, 8), Z(2, 5, 3)))


def test_an_explicit_mask_is_refused_by_name():
    q = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="attn_mask must be None"):
        flash_attention(q, q, q, torch.ones(2, 2, dtype=torch.bool))
    # PyTorch's positional order: (q, k, v, attn_mask, is_causal, scale)
    torch.testing.assert_close(flash_attention(q, q, q, None, True, 0.5),
                               flash_attention(q, q, q, is_causal=True, scale=0.5))
