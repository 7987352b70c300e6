"""Chapter 5: the cost of attention, counted.

`attention_flops` and `projection_flops` (forward FLOPs, 2 per multiply-add),
`score_matrix_bytes` (the N x N matrices) and `kv_cache_bytes` (what generation keeps
instead), against the memory of real GPUs in `GPU_MEMORY`.  Every size argument has one
name across the library: n tokens, d the head width, heads, layers, batch.  Measuring
what a real call costs is `attnlib.measure`'s job.
"""

import torch

from attnlib._checks import require_float_dtype, require_positive_int

#: Bytes in a gigabyte, the decimal unit used for every size in this module
#: (1 GiB = 2**30 bytes is 7% more).
GB = 10**9

#: Nominal memory of three GPUs, the round numbers of the vendors' specification pages,
#: taken here as decimal GB:
#: T4 https://www.nvidia.com/en-us/data-center/tesla-t4/ (16 GB),
#: A100 https://www.nvidia.com/en-us/data-center/a100/ (80 GB model),
#: H200 https://www.nvidia.com/en-us/data-center/h200/ (141 GB).
#: They are not exact byte counts: nvidia-smi reports an A100 80GB as 81,920 MiB
#: (80 GiB, 85.9 GB) and a T4 as 15,360 MiB, and the driver keeps some for itself, so
#: what a program can use differs from these by a few percent (up to about 7%).
GPU_MEMORY = {"T4": 16 * GB, "A100 80GB": 80 * GB, "H200": 141 * GB}



def attention_flops(n, d, heads=1, batch=1, causal=False):
    """Forward FLOPs of attention: 4 * batch * heads * n^2 * d, half that with a causal mask.

    Two matrix products of n x n x d multiply-adds each (Q K^T and A V), 2 FLOPs per
    multiply-add; the softmax's O(n^2) is left out, as is usual.
    """
    for name, value in (("n", n), ("d", d), ("heads", heads), ("batch", batch)):
        require_positive_int(name, value)
    flops = 4 * batch * heads * n * n * d
    return flops // 2 if causal else flops


def projection_flops(n, d_model, batch=1):
    """Forward FLOPs of an attention layer's four projections: 8 * batch * n * d_model^2.

    W_Q, W_K, W_V and the output projection W_O each map n tokens from width d_model to
    d_model (heads * d_k = d_model, as usual): n x d_model x d_model multiply-adds each.
    Linear in n, where `attention_flops(n, d_model // heads, heads)` = 4 n^2 d_model is
    quadratic: attention costs more from n = 2 * d_model on.
    """
    for name, value in (("n", n), ("d_model", d_model), ("batch", batch)):
        require_positive_int(name, value)
    return 4 * 2 * batch * n * d_model * d_model


def score_matrix_bytes(n, heads=1, layers=1, batch=1, dtype=torch.float16):
    """Bytes of the N x N matrices: batch * layers * heads * n^2 * (bytes per element).

    One n x n matrix per head, per layer, per sequence of the batch.  Inference needs one
    layer's matrices at a time (layers=1); training keeps every layer's attention
    weights for the backward pass.  An implementation that keeps several n x n
    intermediates alive at once (scores, exponentials, weights) needs a multiple of this.
    """
    for name, value in (("n", n), ("heads", heads), ("layers", layers), ("batch", batch)):
        require_positive_int(name, value)
    return batch * layers * heads * n * n * require_float_dtype(dtype).itemsize


def kv_cache_bytes(n, d, heads=1, layers=1, batch=1, dtype=torch.float16):
    """Bytes of the key/value cache for n tokens: 2 * batch * layers * heads * n * d
    * (bytes per element), with d the head width.

    Generation stores every earlier token's key and value (2 vectors of width d per
    head and layer) instead of an n x n matrix: linear in n.  With grouped-query
    attention, `heads` is the number of key/value heads.
    """
    for name, value in (("n", n), ("d", d), ("heads", heads), ("layers", layers),
                        ("batch", batch)):
        require_positive_int(name, value)
    return 2 * batch * layers * heads * n * d * require_float_dtype(dtype).itemsize
