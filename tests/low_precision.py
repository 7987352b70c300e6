"""FlashAttention's backward-overflow case, ported (the idea, not the code) from
Dao-AILab/flash-attention, tests/test_flash_attn.py, `test_flash_attn_bwd_overflow`:
large scores (q = 5 randn, k, v = 3 randn), and limits relative to PyTorch's own
low-precision error, both measured against a float64 reference.  Shared by
test_flash.py and test_triton_attention.py."""

import math

import torch


def large_scores_case(n, d, dtype, seed=0, device="cpu"):
    """q, k, v (1, 2, n, d) with scores of tens, and a gradient for the output."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad_out = (torch.randn(1, 2, n, d, generator=gen) * s for s in (5, 3, 3, 1))
    return tuple(t.to(device, dtype) for t in (q, k, v, grad_out))


def written_out_attention(q, k, v, grad_out, is_causal, dtype):
    """Attention written out with PyTorch operations in `dtype`, and its gradients:
    (out, dq, dk, dv).  In float64 it is the reference; in float16 or bfloat16 it
    shows how far plain low-precision PyTorch lands from that reference."""
    q, k, v = (t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v))
    scores = q @ (k / math.sqrt(q.shape[-1])).mT
    if is_causal:
        hidden = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(hidden, -math.inf)
    out = torch.softmax(scores, dim=-1) @ v
    out.backward(grad_out.to(dtype))
    return out.detach(), q.grad, k.grad, v.grad


def assert_as_accurate_as_pytorch(attention, n, d, is_causal, dtype, device="cpu"):
    """`attention(q, k, v, is_causal)` on the large-scores case, against float64, within
    FlashAttention's limits: the output within 2x, the gradients within 5x + 1e-3 of
    PyTorch's low-precision error.  Also checks the dtypes of output and gradients."""
    q, k, v, grad_out = large_scores_case(n, d, dtype, device=device)
    reference = written_out_attention(q, k, v, grad_out, is_causal, torch.float64)

    def errors(results):
        return [(got.double() - ref).abs().max().item()
                for got, ref in zip(results, reference, strict=True)]

    pytorch = errors(written_out_attention(q, k, v, grad_out, is_causal, dtype))
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*inputs, is_causal)
    out.backward(grad_out)
    ours = errors([out.detach(), *(t.grad for t in inputs)])
    assert out.dtype == dtype and all(t.grad.dtype == dtype for t in inputs)
    assert ours[0] <= 2 * pytorch[0], (ours, pytorch)
    for got, allowed in zip(ours[1:], pytorch[1:], strict=True):
        assert got <= 5 * allowed + 1e-3, (ours, pytorch)
