"""Gated linear attention (GLA): the recurrence of fla's `GatedLinearAttention` layer, started from a carried state.

Per head the state `S` is a `(k_dim, v_dim)` matrix. Token `t` decays each key row of it by `exp(gk_t)` (`gk_t <= 0`,
one gate per key channel), adds the token's key-value outer product and is read by the (scaled) query:

    S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale * q_t)

(what fla's `chunk_gla` / `fused_recurrent_gla` and their `naive_recurrent_gla` compute; `scale = k_dim ** -0.5`).

* `gla_ref`: the recurrence token by token (the reference);
* `gla_chunked`: the same in chunks, the torch path. Inside a chunk, with `G_i` the cumulative log gate since the
  chunk's start, `S_i = exp(G_i) * S_0 + sum_{j<=i} exp(G_i - G_j) * k_j v_j^T` (per key channel), so
  `o_i = (q_i exp(G_i)) S_0 + sum_{j<=i} (sum_d q_id k_jd exp(G_id - G_jd)) v_j`. Every exponent is `<= 0` (no
  rescaling that can overflow) and everything is differentiable, the initial state included.

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
