"""A selective state-space layer: a diagonal linear recurrence, by a loop and by a scan.

    h_t = a_t * h_{t-1} + b_t x_t,   y_t = c_t . h_t     (h_{-1} = 0)

Each of the d channels of x carries a state of d_state numbers; the decay a_t (between 0
and 1 when it forgets), the input vector b_t and the read-out vector c_t depend on the
token x_t.  That input dependence is what Mamba's "selective" state-space model adds to
the earlier fixed ones (Gu & Dao, 2023, https://arxiv.org/abs/2312.00752, section 3.2):
a token can choose to keep the state (a_t = 1) or to overwrite it (a_t = 0).  The state
is d x d_state numbers whatever the length: no N x N table and no growing cache.

The recurrence is a scan.  Each step is the affine map h -> a h + u (u = b x), and two
steps compose into one of the same kind, (a1, u1) then (a2, u2) = (a2 a1, a2 u1 + u2)
(`scan_combine`).  That composition is associative, so the N steps can be combined in a
tree, as for prefix sums (Blelloch, 1990, "Prefix Sums and Their Applications", CMU-CS-90-190,
http://www.cs.cmu.edu/afs/cs.cmu.edu/project/scandal/public/papers/CMU-CS-90-190.html,
which lists solving recurrences among the uses of a scan with an associative operator).

- `sequential_scan`: the loop, N steps one after the other;
- `parallel_scan`: the Hillis-Steele scan (Hillis & Steele, 1986, "Data parallel
  algorithms", https://doi.org/10.1145/7902.7903): log2(N) rounds, in each of which every
  position combines with the one 1, 2, 4, ... places before it, all at once.  It does
  O(N log N) work where the loop does O(N) (Blelloch's two-sweep scan does O(N) in 2 log2 N
  rounds), but each round is one vectorised operation over the whole sequence;
- `selective_scan`: the layer's recurrence with given x, a, b, c, by either scan;
- `SelectiveSSM`: the layer with the parameters computed from x as Mamba does.
"""

import math

import torch
import torch.nn.functional as F

from attnlib._checks import require_float_dtype, require_positive_int, require_tensor

METHODS = ("parallel", "sequential")


def scan_combine(first, second):
    """The combine rule of the scan: step (a1, u1) followed by step (a2, u2) is the single
    step (a2 * a1, a2 * u1 + u2).

    Applying h -> a1 h + u1 and then h -> a2 h + u2 gives a2 (a1 h + u1) + u2.  The order
    matters: the earlier step's u1 is decayed by the later a2.  Element-wise on tensors.
    """
    (a1, u1), (a2, u2) = first, second
    return a2 * a1, a2 * u1 + u2


def _check_scan_inputs(a, u):
    require_tensor("a", a, min_dim=2)
    require_tensor("u", u, min_dim=2)
    if a.shape != u.shape:
        raise ValueError(f"a and u must have the same shape (..., N, m), got a of shape "
                         f"{tuple(a.shape)} and u of shape {tuple(u.shape)}")
    if a.dtype != u.dtype:
        raise TypeError(f"a and u must share a dtype, got {a.dtype} and {u.dtype}")


def sequential_scan(a, u):
    """h_t = a_t * h_{t-1} + u_t from h_{-1} = 0, one step after the other.

    a, u: (..., N, m), the time along dimension -2 -> h: (..., N, m).  N steps of 2 FLOPs
    per element.
    """
    _check_scan_inputs(a, u)
    h = torch.zeros_like(u[..., :1, :]).squeeze(-2)
    states = []
    for t in range(u.shape[-2]):
        h = a[..., t, :] * h + u[..., t, :]
        states.append(h)
    return torch.stack(states, dim=-2) if states else u.clone()


def parallel_scan(a, u, combine=scan_combine):
    """h_t = a_t * h_{t-1} + u_t from h_{-1} = 0, by a Hillis-Steele scan in log2(N) rounds.

    a, u: (..., N, m) -> h: (..., N, m), equal to `sequential_scan` up to rounding.  In
    the round with offset s = 1, 2, 4, ..., each position t >= s combines the step it
    holds with the one s places before: `combine((a, u)[t - s], (a, u)[t])`.  After the
    round, position t holds the composition of steps max(0, t - 2s + 1) .. t, so after
    log2(N) rounds it holds all of 0 .. t, and its u is h_t.  `combine` may be replaced
    (an exercise plugs in its own).
    """
    _check_scan_inputs(a, u)
    n, offset = u.shape[-2], 1
    while offset < n:
        earlier = (a[..., :-offset, :], u[..., :-offset, :])
        later = (a[..., offset:, :], u[..., offset:, :])
        a_new, u_new = combine(earlier, later)
        a = torch.cat([a[..., :offset, :], a_new], dim=-2)
        u = torch.cat([u[..., :offset, :], u_new], dim=-2)
        offset *= 2
    return u


def _require_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def selective_scan(x, a, b, c, method="parallel"):
    """The selective recurrence h_t = a_t * h_{t-1} + x_t b_t, y_t = h_t c_t, given a, b, c.

    x: (..., N, d) inputs; a: (..., N, d, d_state) decays; b, c: (..., N, d_state) input
    and read-out vectors shared by the d channels, as in Mamba.  The state h_t is
    (d, d_state): channel i holds h_t[i] = a_t[i] * h_{t-1}[i] + x_t[i] b_t.  Returns
    y: (..., N, d), y_t[i] = c_t . h_t[i].  method: "parallel" (`parallel_scan`) or
    "sequential" (`sequential_scan`), equal up to rounding; gradients flow through both.
    """
    _require_method(method)
    for name, t, dims in (("x", x, 2), ("a", a, 3), ("b", b, 2), ("c", c, 2)):
        require_tensor(name, t, min_dim=dims)
    n, d, d_state = x.shape[-2], x.shape[-1], b.shape[-1]
    if a.shape[-3:] != (n, d, d_state) or b.shape[-2] != n or c.shape[-2:] != (n, d_state):
        raise ValueError(f"expected x (..., N, d), a (..., N, d, d_state), b and c (..., N, "
                         f"d_state) with N = {n}, d = {d} (from x) and d_state = {d_state} (from "
                         f"b), got a {tuple(a.shape)}, b {tuple(b.shape)} and c {tuple(c.shape)}")
    u = x.unsqueeze(-1) * b.unsqueeze(-2)  # (..., N, d, d_state)
    a, u = torch.broadcast_tensors(a, u)
    scan = parallel_scan if method == "parallel" else sequential_scan
    h = scan(a.flatten(-2), u.flatten(-2)).unflatten(-1, (d, d_state))
    return (h @ c.unsqueeze(-1)).squeeze(-1)


class SelectiveSSM(torch.nn.Module):
    """The selective state-space layer of Mamba (Gu & Dao, 2023,
    https://arxiv.org/abs/2312.00752, Algorithm 2), without the convolution, gate and skip
    connection of its block, and with delta from a full d x d projection where Mamba uses
    a low-rank one.

    For x: (..., N, d): step sizes delta = softplus(x W_delta + bias) (..., N, d); decays
    a = exp(delta * A) with A = -exp(A_log) < 0 (d, d_state), so 0 < a < 1; b = x W_B and
    c = x W_C (..., N, d_state); input delta * x, that is B-bar = delta B, as Mamba's
    reference scan computes it (`selective_scan_ref` in https://github.com/state-spaces/mamba,
    mamba_ssm/ops/selective_scan_interface.py).
    Returns `selective_scan(delta * x, a, b, c, method)`: (..., N, d).  A_log starts at
    log(1), ..., log(d_state) in every channel and the bias so that delta lies between
    0.001 and 0.1 (log-uniform), as Mamba's code initialises them
    (mamba_ssm/modules/mamba_simple.py in the same repository).
    """

    def __init__(self, d, d_state=16, method="parallel", seed=0):
        super().__init__()
        require_positive_int("d", d)
        require_positive_int("d_state", d_state)
        _require_method(method)
        self.d, self.d_state, self.method = d, d_state, method
        gen = torch.Generator().manual_seed(seed)
        self.A_log = torch.nn.Parameter(torch.log(torch.arange(1.0, d_state + 1)).repeat(d, 1))
        self.to_delta = torch.nn.Linear(d, d)
        self.to_b = torch.nn.Linear(d, d_state, bias=False)
        self.to_c = torch.nn.Linear(d, d_state, bias=False)
        with torch.no_grad():
            for layer in (self.to_delta, self.to_b, self.to_c):
                layer.weight.normal_(0, d ** -0.5, generator=gen)
            low, high = math.log(1e-3), math.log(0.1)  # delta log-uniform in [0.001, 0.1]
            delta = torch.exp(low + (high - low) * torch.rand(d, generator=gen))
            self.to_delta.bias.copy_(delta + torch.log(-torch.expm1(-delta)))  # softplus^-1

    def forward(self, x):
        require_tensor("x", x, min_dim=2)
        if x.shape[-1] != self.d:
            raise ValueError(f"x must have shape (..., N, d) with d = {self.d}, got "
                             f"{tuple(x.shape)}")
        delta = F.softplus(self.to_delta(x))
        a = torch.exp(delta.unsqueeze(-1) * -torch.exp(self.A_log))
        return selective_scan(delta * x, a, self.to_b(x), self.to_c(x), self.method)


# --- costs -----------------------------------------------------------------------------


def scan_flops(n, d, d_state, batch=1, parallel=False):
    """FLOPs of `selective_scan` on (n, d) inputs with a state of d_state per channel:
    n d d_state multiplications for the inputs x_t b_t, the scan, and 2 n d d_state for
    the read-out, times batch.

    The scan: 2 FLOPs per element and step for the loop (a h + u), 2 n d d_state; for the
    Hillis-Steele scan 3 FLOPs (a a', a u' + u) for every position t >= s in each round
    s = 1, 2, 4, ... < n: 3 d d_state * sum_s (n - s), about 3 n log2(n) d d_state.
    """
    for name, value in (("n", n), ("d", d), ("d_state", d_state), ("batch", batch)):
        require_positive_int(name, value)
    if parallel:
        offsets = [2**i for i in range(max(n - 1, 1).bit_length()) if 2**i < n]
        scan = 3 * sum(n - s for s in offsets)
    else:
        scan = 2 * n
    return batch * d * d_state * (n + scan + 2 * n)


def scan_bytes(n, d, d_state, batch=1, dtype=torch.float32):
    """Bytes of one (n, d, d_state) tensor, batch * n * d * d_state * (bytes per element):
    the states h_t for every t, which both scans build (and autograd keeps), as do the
    decays a and the inputs u.  Linear in n."""
    for name, value in (("n", n), ("d", d), ("d_state", d_state), ("batch", batch)):
        require_positive_int(name, value)
    return batch * n * d * d_state * require_float_dtype(dtype).itemsize


def ssm_state_bytes(d, d_state, layers=1, batch=1, dtype=torch.float16):
    """Bytes of what generation keeps: the state, batch * layers * d * d_state * (bytes
    per element), whatever the length, where `cost.kv_cache_bytes` grows with every
    token."""
    for name, value in (("d", d), ("d_state", d_state), ("layers", layers), ("batch", batch)):
        require_positive_int(name, value)
    return batch * layers * d * d_state * require_float_dtype(dtype).itemsize
