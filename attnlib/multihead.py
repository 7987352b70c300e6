"""Chapter 4: multi-head attention.

    head_j = softmax(Q_j K_j^T / sqrt(d_head) + M) V_j,   j = 0, ..., h - 1
    MHA(X) = concat(head_0, ..., head_{h-1}) W_O

with h heads of width d_head = d_model / h.  One fused projection computes Q, K and V
of every head at once (X W_QKV, width 3 * d_model); `split_heads` cuts each into
(..., h, N, d_head), attention runs on all heads in parallel, and `merge_heads` glues the
heads back to (..., N, d_model) before the output projection W_O.

`MultiHeadAttention` takes masks in the library's convention (True = may attend), so a
`masking.padding_mask` works as it is.  `torch.nn.MultiheadAttention` uses the opposite
convention for its boolean masks (True = may NOT attend): negate a mask to pass it there.

The module also holds the chapter's hand-built example: two heads whose weights are
chosen so that one looks at the previous token and the other at the word that carries
the topic of the sentence.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnlib import projections
from attnlib._checks import require_mask, require_positive_int, require_tensor
from attnlib.attention import scaled_dot_product_attention
from attnlib.masking import causal_mask, combine_masks


def split_heads(x, num_heads):
    """(..., N, h * d_head) -> (..., h, N, d_head).

    Head j gets the features j * d_head ... (j + 1) * d_head - 1 of every token.
    """
    require_tensor("x", x, min_dim=2)
    require_positive_int("num_heads", num_heads)
    width = x.shape[-1]
    if width % num_heads:
        raise ValueError(f"x's last dimension ({width}, shape {tuple(x.shape)}) is not "
                         f"divisible by num_heads = {num_heads}")
    return x.unflatten(-1, (num_heads, width // num_heads)).transpose(-3, -2)


def merge_heads(x):
    """(..., h, N, d_head) -> (..., N, h * d_head), the inverse of `split_heads`."""
    require_tensor("x", x, min_dim=3)
    return x.transpose(-3, -2).flatten(-2)


def _fused_attention(q, k, v, mask):
    """PyTorch's fused attention with the library's policy for a query that sees no key.

    Recent PyTorch returns zeros for such a query on CPU, but does not promise it for every
    backend and version: let the query see every key (no NaN, in the forward or the
    backward pass), then zero it.
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    sees_nothing = ~mask.any(dim=-1, keepdim=True)
    output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | sees_nothing)
    return output.masked_fill(sees_nothing, 0.0)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: fused QKV projection, h heads, output projection.

    d_model: width of the input and output; num_heads: h, which must divide d_model;
    bias: whether both projections have a bias; causal: whether every query sees only
    the keys up to itself; fused: attention through PyTorch's fused
    `F.scaled_dot_product_attention` instead of attnlib's own (same results, see tests).
    Parameters: 4 * d_model^2 (+ 4 * d_model biases), whatever the number of heads.
    """

    def __init__(self, d_model, num_heads, bias=True, causal=False, fused=False,
                 device=None, dtype=None):
        super().__init__()
        require_positive_int("d_model", d_model)
        require_positive_int("num_heads", num_heads)
        if d_model % num_heads:
            raise ValueError(f"d_model = {d_model} is not divisible by num_heads = {num_heads}: "
                             f"each head gets d_model / num_heads features")
        self.d_model, self.num_heads, self.d_head = d_model, num_heads, d_model // num_heads
        self.causal, self.fused = bool(causal), bool(fused)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, device=device, dtype=dtype)
        self.out = nn.Linear(d_model, d_model, bias=bias, device=device, dtype=dtype)

    def extra_repr(self):
        return (f"d_model={self.d_model}, num_heads={self.num_heads}, d_head={self.d_head}, "
                f"causal={self.causal}, fused={self.fused}")

    def _mask(self, attn_mask, x):
        n = x.shape[-2]
        if attn_mask is not None:
            require_mask(attn_mask, (*x.shape[:-2], self.num_heads, n, n))
        causal = causal_mask(n, device=x.device) if self.causal else None
        return combine_masks(attn_mask, causal)

    def forward(self, x, attn_mask=None, return_weights=False):
        """x (..., N, d_model) -> (..., N, d_model).

        attn_mask: boolean, True = may attend, broadcastable to (..., h, N, N); combined
        with the causal mask when `causal`.  With return_weights=True, returns
        (output, weights) with the per-head weights (..., h, N, N), computed by attnlib's
        own attention whatever `fused` says.  A query that sees no key gets a zero
        attention output, so its final output is the output projection's bias.
        """
        require_tensor("x", x, min_dim=2)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x has width {x.shape[-1]} (shape {tuple(x.shape)}), but this "
                             f"MultiHeadAttention expects d_model = {self.d_model}")
        mask = self._mask(attn_mask, x)
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        weights = None
        if return_weights or not self.fused:
            heads, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                          return_weights=True)
        else:
            heads = _fused_attention(q, k, v, mask)
        output = self.out(merge_heads(heads))
        return (output, weights) if return_weights else output

    @classmethod
    def from_torch(cls, module, causal=False, fused=False):
        """A copy of a `torch.nn.MultiheadAttention(batch_first=True)` with the same weights.

        Give it the same input and masks (negated: PyTorch's boolean masks are True where
        a query may NOT attend) and it returns the same output.  PyTorch's dropout is not
        copied (this module has none): compare with the PyTorch module in eval mode.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"module must be a torch.nn.MultiheadAttention, "
                            f"got {type(module).__name__}")
        if not module.batch_first:
            raise ValueError("module must have batch_first=True, so that both take "
                             "(B, N, d_model); got batch_first=False")
        if not module._qkv_same_embed_dim:
            raise ValueError(f"module must have kdim = vdim = embed_dim (self-attention), got "
                             f"kdim = {module.kdim}, vdim = {module.vdim}, "
                             f"embed_dim = {module.embed_dim}")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("module must not use add_bias_kv or add_zero_attn")
        bias = module.in_proj_bias is not None
        weight = module.in_proj_weight
        copy = cls(module.embed_dim, module.num_heads, bias=bias, causal=causal, fused=fused,
                   device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            copy.qkv.weight.copy_(weight)
            copy.out.weight.copy_(module.out_proj.weight)
            if bias:
                copy.qkv.bias.copy_(module.in_proj_bias)
                copy.out.bias.copy_(module.out_proj.bias)
        return copy


# --- the hand-built example: one head per rule ------------------------------------------

#: The sentence of chapter 4's example.
EXAMPLE_SENTENCE = "i sat by the river on the bank"

#: Angle between the position features of neighbouring tokens (radians).
POSITION_ANGLE = math.pi / 6

#: Longest sentence for which "the previous token" is the closest angle without ambiguity.
MAX_EXAMPLE_TOKENS = 12

#: The example's embedding features: chapter 1's six, then the position as an angle.
EXAMPLE_FEATURES = (*projections.FEATURES, "position cos", "position sin")

#: What each head of `hand_built_heads` looks for.
HEAD_NAMES = ("previous token", "topic")

#: The meaning of each output feature of `hand_built_heads` (identity output projection).
OUTPUT_FEATURES = ("previous: noun", "previous: verb", "previous: function",
                   "previous: ambiguous", "topic: water", "topic: money", "(unused)",
                   "(unused)")

#: Largest score of each head: how sharply its softmax picks the winner.
PREVIOUS_TOKEN_SCORE = 30.0
TOPIC_SCORE = 8.0


def embed_with_positions(sentence, dtype=torch.float32):
    """Tokens and embeddings (N, 8): chapter 1's six features, then cos and sin of
    POSITION_ANGLE * position, so that attention can tell where a token is."""
    tokens, x = projections.embed(sentence, dtype=dtype)
    if len(tokens) > MAX_EXAMPLE_TOKENS:
        raise ValueError(f"sentence has {len(tokens)} tokens; the hand-built example handles "
                         f"at most {MAX_EXAMPLE_TOKENS}")
    angle = POSITION_ANGLE * torch.arange(len(tokens), dtype=dtype)
    return tokens, torch.cat([x, angle.cos()[:, None], angle.sin()[:, None]], dim=-1)


def hand_built_heads(dtype=torch.float32):
    """MultiHeadAttention(d_model=8, num_heads=2) with weights chosen by hand.

    Head 0, "previous token": its query is the token's position turned back by one step,
    q_i = c (cos a(i-1), sin a(i-1)), and its key is the position itself, so
    q_i . k_j = c cos(a (i - 1 - j)) peaks at j = i - 1.  Its value carries the word
    class (noun, verb, function, ambiguous).
    Head 1, "topic": every query asks the same question through the bias, and the key is
    how much water or money a word carries.  Its value carries the topic itself.
    The output projection is the identity: output features are `OUTPUT_FEATURES`.
    """
    f = {name: i for i, name in enumerate(EXAMPLE_FEATURES)}
    d_model, d_head = 8, 4
    # In the course's notation X W (d_model x d_out); nn.Linear stores the transpose.
    w_q, w_k, w_v = (torch.zeros(d_model, d_model, dtype=torch.float64) for _ in range(3))
    b_q = torch.zeros(d_model, dtype=torch.float64)
    c = PREVIOUS_TOKEN_SCORE * math.sqrt(d_head)  # undoes the 1/sqrt(d_head) of attention
    cos, sin = math.cos(POSITION_ANGLE), math.sin(POSITION_ANGLE)
    pc, ps = f["position cos"], f["position sin"]
    # head 0: rotate the position back by one step: (cos a i, sin a i) -> (cos a(i-1), ...)
    w_q[pc, 0], w_q[ps, 0] = c * cos, c * sin
    w_q[pc, 1], w_q[ps, 1] = -c * sin, c * cos
    w_k[pc, 0], w_k[ps, 1] = 1.0, 1.0
    for column, feature in enumerate(("noun", "verb", "function", "ambiguous")):
        w_v[f[feature], column] = 1.0
    # head 1 (columns d_head ...): a constant query "which topic?"; keys answer with it
    b_q[d_head] = TOPIC_SCORE * math.sqrt(d_head)
    w_k[f["water"], d_head], w_k[f["money"], d_head] = 1.0, 1.0
    w_v[f["water"], d_head], w_v[f["money"], d_head + 1] = 1.0, 1.0

    mha = MultiHeadAttention(d_model, 2, bias=True, dtype=dtype)
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([w_q, w_k, w_v], dim=1).T)
        mha.qkv.bias.copy_(torch.cat([b_q, torch.zeros(2 * d_model, dtype=torch.float64)]))
        mha.out.weight.copy_(torch.eye(d_model))
        mha.out.bias.zero_()
    return mha
