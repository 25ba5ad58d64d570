"""Gated linear attention: the recurrences of fla's GLA and RWKV-6 layers, started from a carried state.

Per head the state `S` is a `(k_dim, v_dim)` matrix. Token `t` decays each key row of it by `exp(gk_t)` (`gk_t <= 0`,
one gate per key channel), adds the token's key-value outer product and is read by the (scaled) query:

    S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale * q_t)

(what fla's `chunk_gla` / `fused_recurrent_gla` and their `naive_recurrent_gla` compute; `scale = k_dim ** -0.5`).

RWKV-6 reads the state *before* the token's update, plus the token's own key-value weighted by a per-channel bonus
`u` (fla's `chunk_rwkv6`, `naive_recurrent_rwkv6`; RWKV-6 calls it with `scale = 1`):

    o_t = (S_{t-1} + diag(u) k_t v_t^T)^T (scale * q_t),   S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T

* `gla_ref`, `rwkv6_ref`: the recurrences token by token (the references);
* `gla_chunked`, `rwkv6_chunked`: the same in chunks, the torch path. Inside a chunk, with `G_i` the cumulative
  log gate since the chunk's start, `S_i = exp(G_i) * S_0 + sum_{j<=i} exp(G_i - G_j) * k_j v_j^T` (per key
  channel), so `o_i = (q_i exp(G_i)) S_0 + sum_{j<=i} (sum_d q_id k_jd exp(G_id - G_jd)) v_j`. Every exponent
  is `<= 0` (no rescaling that can overflow) and everything is differentiable, the initial state included.
  RWKV-6's output sums over `j < i` with `G_{i-1}` in place of `G_i`, plus its bonus term.

Shape legend: b = batch, l = sequence, h = heads, k/v = key/value head dims, c = chunk length.
"""

from __future__ import annotations

import torch

from .gated_delta import _float32


def _prepare(q, k, v, gk, initial_state, scale):
    """Float32, heads first `(b, h, l, ...)`, queries scaled, the state `(b, h, k, v)` (zeros when not given)."""
    q, k, v, gk = (x.float().transpose(1, 2) for x in (q, k, v, gk))
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    batch, heads, _, k_dim = k.shape
    state = q.new_zeros(batch, heads, k_dim, v.shape[-1]) if initial_state is None else initial_state.float()
    return q, k, v, gk, state


@_float32
def gla_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLA token by token.

    Args:
        q, k (`torch.Tensor` of shape `(b, l, h, k)`): queries and keys.
        v (`torch.Tensor` of shape `(b, l, h, v)`): values.
        gk (`torch.Tensor` of shape `(b, l, h, k)`): log gates (`<= 0`).
        initial_state (`torch.Tensor` of shape `(b, h, k, v)`, *optional*): the carried state (zeros if `None`).
        scale (`float`, *optional*): the queries' scale, `k ** -0.5` by default.

    Returns:
        `(output (b, l, h, v), final_state (b, h, k, v))`, both float32.
    """
    q, k, v, gk, state = _prepare(q, k, v, gk, initial_state, scale)
    outputs = []
    for t in range(q.shape[2]):
        state = gk[:, :, t, :, None].exp() * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    out = torch.stack(outputs, dim=2) if outputs else v.new_zeros(v.shape)
    return out.transpose(1, 2), state


@_float32
def gla_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLA chunk by chunk (see the module docstring); the arguments and results of `gla_ref`.

    `chunk_size` bounds the `(c, c, k)` pairwise gates each chunk holds: 16 keeps them small at any width.
    """
    q, k, v, gk, state = _prepare(q, k, v, gk, initial_state, scale)
    outputs = []
    for start in range(0, q.shape[2], chunk_size):
        qc, kc, vc = (x[:, :, start : start + chunk_size] for x in (q, k, v))
        G = gk[:, :, start : start + chunk_size].cumsum(dim=2)  # (b, h, c, k)
        n = G.shape[2]
        # exp(G_i - G_j) for j <= i; the masked pairs (j > i) are replaced before the exp, so nothing overflows.
        causal = torch.ones(n, n, dtype=torch.bool, device=G.device).tril()
        pair = (G[:, :, :, None, :] - G[:, :, None, :, :]).masked_fill(~causal[:, :, None], float("-inf"))
        scores = (qc[:, :, :, None, :] * kc[:, :, None, :, :] * pair.exp()).sum(-1)  # (b, h, c, c)
        outputs.append((qc * G.exp()) @ state + scores @ vc)
        last = G[:, :, -1:]  # (b, h, 1, k)
        state = last.transpose(-1, -2).exp() * state + (kc * (last - G).exp()).transpose(-1, -2) @ vc
    out = torch.cat(outputs, dim=2) if outputs else v.new_zeros(v.shape)
    return out.transpose(1, 2), state


@_float32
def rwkv6_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-6 token by token: the arguments of `gla_ref` (`w` the log decays) and the bonus `u (h, k)`."""
    q, k, v, w, state = _prepare(q, k, v, w, initial_state, scale)
    u = u.float()[None, :, :, None]
    outputs = []
    for t in range(q.shape[2]):
        kv = k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state + u * kv))
        state = w[:, :, t, :, None].exp() * state + kv
    out = torch.stack(outputs, dim=2) if outputs else v.new_zeros(v.shape)
    return out.transpose(1, 2), state


@_float32
def rwkv6_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-6 chunk by chunk (see the module docstring); the arguments and results of `rwkv6_ref`."""
    q, k, v, w, state = _prepare(q, k, v, w, initial_state, scale)
    u = u.float()[None, :, None, :]
    outputs = []
    for start in range(0, q.shape[2], chunk_size):
        qc, kc, vc = (x[:, :, start : start + chunk_size] for x in (q, k, v))
        G = w[:, :, start : start + chunk_size].cumsum(dim=2)  # (b, h, c, k)
        G_prev = G - w[:, :, start : start + chunk_size]
        n = G.shape[2]
        before = torch.ones(n, n, dtype=torch.bool, device=G.device).tril(-1)  # j < i
        pair = (G_prev[:, :, :, None, :] - G[:, :, None, :, :]).masked_fill(~before[:, :, None], float("-inf"))
        scores = (qc[:, :, :, None, :] * kc[:, :, None, :, :] * pair.exp()).sum(-1)  # (b, h, c, c)
        bonus = (qc * u * kc).sum(-1, keepdim=True) * vc
        outputs.append((qc * G_prev.exp()) @ state + scores @ vc + bonus)
        last = G[:, :, -1:]
        state = last.transpose(-1, -2).exp() * state + (kc * (last - G).exp()).transpose(-1, -2) @ vc
    out = torch.cat(outputs, dim=2) if outputs else v.new_zeros(v.shape)
    return out.transpose(1, 2), state
