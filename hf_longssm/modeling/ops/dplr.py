"""The diagonal-plus-low-rank (DPLR) delta rule, RWKV-7's state update, started from a carried state.

Per head the state `S` is a `(k_dim, v_dim)` matrix. Token `t` decays each key row by `exp(gk_t)` (`gk_t <= 0`),
adds the key-value outer product and a rank-one correction read from the previous state with `a_t`, written along
`b_t`, and is read by the (scaled) query:

    S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T + b_t (a_t^T S_{t-1}),   o_t = S_t^T (scale * q_t)

(fla's `chunk_dplr_delta_rule` and its `dplr_recurrence`; RWKV-7 calls it with `q = r`, `gk = w`, `a = -kk`,
`b = kk * a`, `scale = 1`).

* `dplr_ref`: the recurrence token by token (the reference);
* `dplr_chunked`: the same in chunks, the torch path. Inside a chunk, with `G_i` the cumulative log decay since the
  chunk's start and `u_i = a_i^T S_{i-1}` the rows the low-rank term reads,
  `S_i = exp(G_i) S_0 + sum_{j<=i} exp(G_i - G_j) (k_j v_j^T + b_j u_j)`, so the `u` of a chunk solve one unit
  lower-triangular system, `(I - M_b) U = (a exp(G_{i-1})) S_0 + M_k V` with
  `M_x[i, j] = sum_d a_id x_jd exp(G_{i-1,d} - G_jd)` (j < i); outputs and the chunk's final state are then matrix
  products. Every exponent is `<= 0`, and everything is differentiable, the initial state included.

Shape legend: b = batch, l = sequence, h = heads, k/v = key/value head dims, c = chunk length.
"""

from __future__ import annotations

import torch

from .gated_delta import _float32


def _prepare(q, k, v, a, b, gk, initial_state, scale):
    """Float32, heads first `(b, h, l, ...)`, queries scaled, the state `(b, h, k, v)` (zeros when not given)."""
    q, k, v, a, b, gk = (x.float().transpose(1, 2) for x in (q, k, v, a, b, gk))
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    batch, heads, _, k_dim = k.shape
    state = q.new_zeros(batch, heads, k_dim, v.shape[-1]) if initial_state is None else initial_state.float()
    return q, k, v, a, b, gk, state


@_float32
def dplr_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPLR delta rule token by token.

    Args:
        q, k, a, b (`torch.Tensor` of shape `(b, l, h, k)`): queries, keys and the low-rank term's read and write
            directions.
        v (`torch.Tensor` of shape `(b, l, h, v)`): values.
        gk (`torch.Tensor` of shape `(b, l, h, k)`): log decays (`<= 0`).
        initial_state (`torch.Tensor` of shape `(b, h, k, v)`, *optional*): the carried state (zeros if `None`).
        scale (`float`, *optional*): the queries' scale, `k ** -0.5` by default (RWKV-7: 1).

    Returns:
        `(output (b, l, h, v), final_state (b, h, k, v))`, both float32.
    """
    q, k, v, a, b, gk, state = _prepare(q, k, v, a, b, gk, initial_state, scale)
    outputs = []
    for t in range(q.shape[2]):
        read = torch.einsum("bhk,bhkv->bhv", a[:, :, t], state)
        state = gk[:, :, t, :, None].exp() * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        state = state + b[:, :, t, :, None] * read[:, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    out = torch.stack(outputs, dim=2) if outputs else v.new_zeros(v.shape)
    return out.transpose(1, 2), state


def _pair_decays(G_rows: torch.Tensor, G: torch.Tensor, strict: bool) -> torch.Tensor:
    """`exp(G_rows[i] - G[j])` per key channel for `j < i` (`strict`) or `j <= i`, zero elsewhere: `(b, h, c, c, k)`.
    The pairs outside are replaced before the exp, so nothing overflows."""
    n = G.shape[2]
    keep = torch.ones(n, n, dtype=torch.bool, device=G.device).tril(-1 if strict else 0)
    return (G_rows[:, :, :, None, :] - G[:, :, None, :, :]).masked_fill(~keep[:, :, None], float("-inf")).exp()


def _scores(rows: torch.Tensor, decays: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`sum_d rows[i, d] * cols[j, d] * decays[i, j, d]`: `(b, h, c, c)`."""
    return (rows[:, :, :, None, :] * decays * cols[:, :, None, :, :]).sum(-1)


@_float32
def dplr_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPLR delta rule chunk by chunk (see the module docstring); the arguments and results of `dplr_ref`."""
    q, k, v, a, b, gk, state = _prepare(q, k, v, a, b, gk, initial_state, scale)
    outputs = []
    for start in range(0, q.shape[2], chunk_size):
        qc, kc, vc, ac, bc, wc = (x[:, :, start : start + chunk_size] for x in (q, k, v, a, b, gk))
        G = wc.cumsum(dim=2)  # (b, h, c, k): the decay from the chunk's start through token i
        G_prev = G - wc  # through token i - 1
        # u = a^T S_{i-1}: the unit lower-triangular system of the module docstring
        before = _pair_decays(G_prev, G, strict=True)
        eye = torch.eye(G.shape[2], device=G.device)
        rhs = (ac * G_prev.exp()) @ state + _scores(ac, before, kc) @ vc
        u = torch.linalg.solve_triangular(eye - _scores(ac, before, bc), rhs, upper=False, unitriangular=True)
        # outputs: S_i read by q_i
        through = _pair_decays(G, G, strict=False)
        outputs.append((qc * G.exp()) @ state + _scores(qc, through, kc) @ vc + _scores(qc, through, bc) @ u)
        # the chunk's final state
        to_end = (G[:, :, -1:] - G).exp()  # (b, h, c, k)
        state = G[:, :, -1:].transpose(-1, -2).exp() * state
        state = state + (kc * to_end).transpose(-1, -2) @ vc + (bc * to_end).transpose(-1, -2) @ u
    out = torch.cat(outputs, dim=2) if outputs else v.new_zeros(v.shape)
    return out.transpose(1, 2), state
