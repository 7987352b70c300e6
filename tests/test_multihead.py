import math

import pytest
import torch
from torch import nn

from attnlib import multihead
from attnlib.masking import causal_mask, padding_mask
from attnlib.multihead import MultiHeadAttention, merge_heads, split_heads
from tests import reference


def randn(*shape, seed=0, dtype=torch.float32):
    return reference.randn(*shape, seed=seed, dtype=dtype)


def torch_mha(d_model=16, num_heads=4, bias=True, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    module = nn.MultiheadAttention(d_model, num_heads, bias=bias, batch_first=True, dtype=dtype)
    if bias:  # PyTorch initialises the biases to zero: make them count
        with torch.no_grad():
            module.in_proj_bias.normal_()
            module.out_proj.bias.normal_()
    return module.eval()


# --- split and merge ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 12), (2, 5, 12), (2, 3, 5, 12)])
@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 12])
def test_split_heads_gives_each_head_its_slice_of_features(shape, num_heads):
    x = randn(*shape)
    heads = split_heads(x, num_heads)
    d_head = shape[-1] // num_heads
    assert heads.shape == (*shape[:-2], num_heads, shape[-2], d_head)
    for j in range(num_heads):
        assert torch.equal(heads[..., j, :, :], x[..., j * d_head:(j + 1) * d_head])
    assert torch.equal(merge_heads(heads), x)


def test_split_and_merge_reject_bad_input():
    with pytest.raises(ValueError, match=r"x's last dimension \(10, shape \(4, 10\)\) is not "
                                         r"divisible by num_heads = 3"):
        split_heads(torch.zeros(4, 10), 3)
    with pytest.raises(ValueError, match="x must have at least 3 dimension"):
        merge_heads(torch.zeros(4, 10))
    with pytest.raises(TypeError, match="num_heads must be an int"):
        split_heads(torch.zeros(4, 10), 2.0)


# --- the module against independent references -----------------------------------------


def textbook_mha(mha, x, mask=None):
    """concat_i softmax(Q_i K_i^T / sqrt(d_head) + M) V_i, then W_O, head by head in float64."""
    d, h = mha.d_model, mha.num_heads
    d_head = d // h
    w = mha.qkv.weight.detach().double()
    b = mha.qkv.bias.detach().double() if mha.qkv.bias is not None else torch.zeros(3 * d)
    x = x.double()
    heads = []
    for i in range(h):
        rows = slice(i * d_head, (i + 1) * d_head)
        q, k, v = (x @ w[part * d:(part + 1) * d][rows].T + b[part * d:(part + 1) * d][rows]
                   for part in range(3))
        scores = q @ k.mT / math.sqrt(d_head)
        if mask is not None:
            scores = scores.masked_fill(~mask[..., i if mask.shape[-3] > 1 else 0, :, :],
                                        -math.inf)
        heads.append(torch.softmax(scores, dim=-1) @ v)
    out = torch.cat(heads, dim=-1) @ mha.out.weight.detach().double().T
    return out + mha.out.bias.detach().double() if mha.out.bias is not None else out


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding", "per-head"])
def test_matches_the_textbook_formula_head_by_head(fused, mask_kind):
    torch.manual_seed(1)
    mha = MultiHeadAttention(12, 3, fused=fused, dtype=torch.float64)
    x = randn(2, 5, 12, seed=2, dtype=torch.float64)
    mask = {"none": None, "causal": causal_mask(5)[None, None],
            "padding": padding_mask([5, 3], 5),
            "per-head": randn(2, 3, 5, 5, seed=3) > -0.5}[mask_kind]
    if mask is not None:
        mask = mask | torch.eye(5, dtype=torch.bool)  # every query sees a key
    torch.testing.assert_close(mha(x, attn_mask=mask), textbook_mha(mha, x, mask),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_from_torch_gives_pytorchs_output(fused, bias, causal, padded):
    module = torch_mha(bias=bias, seed=3)
    x = randn(3, 6, 16, seed=4)
    lengths = [6, 4, 1]
    # PyTorch's boolean masks mean the opposite: True = may NOT attend
    torch_masks = {"attn_mask": ~causal_mask(6) if causal else None,
                   "key_padding_mask": ~padding_mask(lengths, 6)[:, 0, 0] if padded else None}
    with torch.no_grad():
        expected, _ = module(x, x, x, need_weights=False, **torch_masks)
        ours = MultiHeadAttention.from_torch(module, causal=causal, fused=fused)
        got = ours(x, attn_mask=padding_mask(lengths, 6) if padded else None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_per_head_weights_are_pytorchs():
    module = torch_mha(seed=5)
    x = randn(2, 7, 16, seed=6)
    mask = padding_mask([7, 5], 7)
    with torch.no_grad():
        _, expected = module(x, x, x, key_padding_mask=~mask[:, 0, 0],
                             average_attn_weights=False)
        _, weights = MultiHeadAttention.from_torch(module)(x, attn_mask=mask,
                                                           return_weights=True)
    assert weights.shape == (2, 4, 7, 7)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-5)


def test_both_attention_paths_agree_also_for_a_query_that_sees_nothing():
    torch.manual_seed(7)
    own = MultiHeadAttention(16, 4, causal=True)
    fused = MultiHeadAttention(16, 4, causal=True, fused=True)
    fused.load_state_dict(own.state_dict())
    x = randn(3, 6, 16, seed=8)
    mask = padding_mask([6, 2, 0], 6)  # the third sequence is all padding
    x_own, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_own, out_fused = own(x_own, attn_mask=mask), fused(x_fused, attn_mask=mask)
    torch.testing.assert_close(out_fused, out_own, rtol=1e-5, atol=1e-5)
    # the policy: zero attention output, so only the output projection's bias is left
    torch.testing.assert_close(out_own[2], own.out.bias.expand(6, 16))
    out_own.sum().backward()
    out_fused.sum().backward()
    assert x_fused.grad.isfinite().all()
    torch.testing.assert_close(x_fused.grad, x_own.grad, rtol=1e-5, atol=1e-5)


def test_causal_flag_is_the_causal_mask_and_no_output_sees_the_future():
    torch.manual_seed(9)
    mha = MultiHeadAttention(8, 2, causal=True)
    plain = MultiHeadAttention(8, 2)
    plain.load_state_dict(mha.state_dict())
    x = randn(2, 6, 8, seed=10)
    with torch.no_grad():
        torch.testing.assert_close(mha(x), plain(x, attn_mask=causal_mask(6)))
        changed = x.clone()
        changed[:, 4:] = randn(2, 2, 8, seed=11)
        assert torch.equal(mha(changed)[:, :4], mha(x)[:, :4])


def test_any_leading_dimensions_and_an_unbatched_input():
    torch.manual_seed(12)
    mha = MultiHeadAttention(8, 4)
    x = randn(2, 3, 5, 8, seed=13)
    with torch.no_grad():
        out = mha(x)
        assert out.shape == x.shape
        torch.testing.assert_close(mha(x[1, 2]), out[1, 2])


@pytest.mark.parametrize("fused", [False, True])
def test_an_empty_sequence_gives_an_empty_output(fused):
    mha = MultiHeadAttention(8, 2, causal=True, fused=fused)
    with torch.no_grad():
        assert mha(torch.zeros(3, 0, 8)).shape == (3, 0, 8)
        assert mha(torch.zeros(3, 0, 8), attn_mask=padding_mask([0, 0, 0], 0)).shape == (3, 0, 8)


@pytest.mark.parametrize("num_heads", [1, 2, 4, 8])
def test_parameter_count_does_not_depend_on_the_number_of_heads(num_heads):
    d = 64
    mha = MultiHeadAttention(d, num_heads)
    count = sum(p.numel() for p in mha.parameters())
    assert count == 4 * d * d + 4 * d
    assert count == sum(p.numel() for p in torch_mha(d, num_heads).parameters())


def test_bad_construction_and_input_raise_errors_that_say_so():
    with pytest.raises(ValueError, match="d_model = 10 is not divisible by num_heads = 3"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"x has width 6 \(shape \(2, 5, 6\)\), but this "
                                         r"MultiHeadAttention expects d_model = 8"):
        mha(torch.zeros(2, 5, 6))
    with pytest.raises(TypeError, match="attn_mask must be a boolean tensor .* got torch.int64"):
        mha(torch.zeros(5, 8), attn_mask=torch.ones(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(2, 1, 1, 5\) does not broadcast "
                                         r"to the scores' shape \(2, 5, 5\)"):
        mha(torch.zeros(5, 8), attn_mask=padding_mask([5, 3], 5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        mha([[0.0] * 8])


def test_from_torch_refuses_what_it_cannot_copy():
    with pytest.raises(TypeError, match="module must be a torch.nn.MultiheadAttention, got Linear"):
        MultiHeadAttention.from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch_first=True"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="kdim = 4, vdim = 8, embed_dim = 8"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2, kdim=4, batch_first=True))
    with pytest.raises(ValueError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(
            nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True))


# --- the hand-built example -------------------------------------------------------------


def test_hand_built_heads_look_at_the_previous_token_and_at_the_topic_word():
    tokens, x = multihead.embed_with_positions(multihead.EXAMPLE_SENTENCE)
    topic = [multihead.projections.VOCABULARY[t].get("water", 0.0) for t in tokens]
    with torch.no_grad():
        _, weights = multihead.hand_built_heads()(x, return_weights=True)
    previous, topical = weights[0], weights[1]
    for i in range(1, len(tokens)):
        assert previous[i].argmax() == i - 1 and previous[i, i - 1] > 0.9
    assert (topical.argmax(-1) == topic.index(max(topic))).all() and (topical.max(-1).values
                                                                      > 0.9).all()


def test_embed_with_positions_refuses_sentences_longer_than_the_angle_allows():
    with pytest.raises(ValueError, match="sentence has 13 tokens; the hand-built example "
                                         "handles at most 12"):
        multihead.embed_with_positions(" ".join(["the"] * 13))
