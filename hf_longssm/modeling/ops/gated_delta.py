"""Gated DeltaNet: the gated delta rule started from a carried `initial_state`.

Per head the state `S` is a `(k_dim, v_dim)` matrix. Token `t` decays it by `exp(g_t)` (`g_t <= 0`), then writes
the correction of what it predicts for the token's key, with strength `beta_t`, and reads it with the query:

    S_t = exp(g_t) S_{t-1} + k_t u_t^T,   u_t = beta_t (v_t - exp(g_t) S_{t-1}^T k_t),   o_t = S_t^T q_t

(queries and keys L2-normalized, queries scaled by `k_dim ** -0.5`: what transformers' Qwen3-Next, Qwen3.5 and
OLMo-Hybrid layers and fla's `chunk_gated_delta_rule(use_qk_l2norm_in_kernel=True)` compute).

* `gated_delta_rule_ref`: the recurrence token by token (the reference);
* `gated_delta_rule_chunked`: the same in chunks, the torch path. Inside a chunk, with `G_i` the cumulative log
  decay since the chunk's start, `S_i = exp(G_i) S_0 + sum_{j<=i} exp(G_i - G_j) k_j u_j^T`, so the corrections
  `u` solve one unit lower-triangular system, `(I + A) U = beta * (V - exp(G) K S_0)` with
  `A_ij = beta_i exp(G_i - G_j) k_i.k_j` (j < i); outputs and the chunk's final state are then matrix products.
  Everything is differentiable, the initial state included.

Shape legend: b = batch, l = sequence, h = value heads, k/v = key/value head dims, c = chunk length.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`x / sqrt(sum(x^2) + eps)` over the last dim, fla's (and transformers') L2 norm for queries and keys."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _float32(fn):
    """Run `fn` in float32 with autocast off: under `torch.autocast` its matmuls would round to bfloat16 at every
    chunk, and segment boundaries that do not fall on a chunk's would change the result."""

    @functools.wraps(fn)
    def wrapper(q, *args, **kwargs):
        with torch.autocast(q.device.type, enabled=False):
            return fn(q, *args, **kwargs)

    return wrapper


def _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm):
    """Float32, heads first `(b, h, l, ...)`, grouped keys repeated for their value heads, queries scaled."""
    heads = v.shape[2]
    if q.shape[2] != heads:  # each query/key head serves heads // q_heads consecutive value heads
        q = q.repeat_interleave(heads // q.shape[2], dim=2)
        k = k.repeat_interleave(heads // k.shape[2], dim=2)
    q, k, v = (x.float().transpose(1, 2) for x in (q, k, v))
    g, beta = g.float().transpose(1, 2), beta.float().transpose(1, 2)
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    q = q * q.shape[-1] ** -0.5
    batch, _, _, k_dim = k.shape
    if initial_state is None:
        state = q.new_zeros(batch, heads, k_dim, v.shape[-1])
    else:
        state = initial_state.float()
    return q, k, v, g, beta, state


@_float32
def gated_delta_rule_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token gated delta rule (the reference).

    q, k `(b, l, h_k, k)`; v `(b, l, h, v)`; g, beta `(b, l, h)`; initial_state `(b, h, k, v)`.
    Returns `(o (b, l, h, v) float32, final_state (b, h, k, v) float32)`.
    """
    q, k, v, g, beta, state = _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm)
    outputs = []
    for t in range(q.shape[2]):
        state = state * g[:, :, t].exp()[..., None, None]
        u = beta[:, :, t, None] * (v[:, :, t] - torch.einsum("bhkv,bhk->bhv", state, k[:, :, t]))
        state = state + k[:, :, t, :, None] * u[:, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, :, t]))
    return torch.stack(outputs, dim=1), state


@_float32
def gated_delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule chunk by chunk (the torch path): `gated_delta_rule_ref`'s contract."""
    q, k, v, g, beta, state = _prepare(q, k, v, g, beta, initial_state, use_qk_l2norm)
    seq_len = q.shape[2]
    pad = -seq_len % chunk_size  # padded tokens have k = v = 0 and g = 0: they change nothing and are dropped
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    b, h, length, k_dim = k.shape
    n = length // chunk_size
    q, k, v = (x.reshape(b, h, n, chunk_size, -1) for x in (q, k, v))
    g, beta = g.reshape(b, h, n, chunk_size), beta.reshape(b, h, n, chunk_size)

    G = g.cumsum(-1)  # (b, h, n, c): log decay from the chunk's start to each position, included
    strictly_upper = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).triu(1)
    # exp(G_i - G_j) for j <= i; the upper part is masked before the exp (it would overflow)
    pair_decay = (G[..., :, None] - G[..., None, :]).masked_fill(strictly_upper, float("-inf")).exp()
    k_beta = k * beta[..., None]
    system = (k_beta @ k.transpose(-1, -2) * pair_decay).tril(-1)  # A, strictly lower
    identity = torch.eye(chunk_size, device=q.device)
    # (I + A)^-1 applied to both parts of the right-hand side, beta * V and beta * exp(G) K (which S_0 multiplies)
    unit_lower = identity + system
    inv_v = torch.linalg.solve_triangular(unit_lower, v * beta[..., None], upper=False, unitriangular=True)
    inv_k = torch.linalg.solve_triangular(unit_lower, k_beta * G.exp()[..., None], upper=False, unitriangular=True)
    scores = q @ k.transpose(-1, -2) * pair_decay  # (b, h, n, c, c), j <= i
    q_decayed = q * G.exp()[..., None]
    k_to_end = k * (G[..., -1:] - G).exp()[..., None]  # each key decayed to the chunk's end
    chunk_decay = G[..., -1].exp()[..., None, None]

    outputs = []
    for i in range(n):
        u = inv_v[:, :, i] - inv_k[:, :, i] @ state  # (b, h, c, v)
        outputs.append(q_decayed[:, :, i] @ state + scores[:, :, i] @ u)
        state = state * chunk_decay[:, :, i] + k_to_end[:, :, i].transpose(-1, -2) @ u
    o = torch.stack(outputs, dim=2).reshape(b, h, length, -1)[:, :, :seq_len]
    return o.transpose(1, 2), state
