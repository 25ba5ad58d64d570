"""Mamba-1 and FalconMamba: the selective scan started from a carried SSM state.

Three implementations of one function, all returning the output and the final state:

* `selective_scan_ref`: a step-by-step loop, the reference every other path is tested against;
* `selective_scan_chunked`: plain PyTorch, exact, parallel inside chunks of `chunk_size` steps (the matrix form of
  the recurrence with cumulative log-decays) and sequential across chunks, so memory grows with the chunk, not with
  the segment. This is the CPU path and the GPU path without mamba-ssm;
* `selective_scan_from_zero_with_correction`: mamba-ssm's zero-start `selective_scan_fn` plus the exact correction for
  the initial state. The scan is linear in its initial state h0:
  y_t += C_t . (prod_{s<=t} exp(dt_s A)) h0 and h_T += (prod_{s<=T} exp(dt_s A)) h0.

Shape legend: b = batch, d = intermediate channels, l = sequence, n = SSM state size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from .common import discretize, segsum


# Chunk of the parallel torch scan: one cumulative sum per chunk replaces T Python steps; memory is (b, d, T, n).
DEFAULT_SCAN_CHUNK = 128
# Inside a chunk the factorized form multiplies exp(-S_s) by exp(S_t) (S the cumulative log-decay). Both stay finite
# in float32 while |S| < ~88 and in float64 while |S| < ~709; past that a chunk is halved, down to the pairwise
# (T x T) form, exact for any decay. The rounding error does not grow with |S| (see `_scan_chunk`).
_MAX_FACTORIZED_DECAY = {torch.float32: 60.0, torch.float64: 600.0}


def _step(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    return discretize(delta, None if delta_bias is None else delta_bias[:, None], delta_softplus)  # bias per channel


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    if D is not None:
        y = y + u.float() * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step selective scan from `initial_state` (the reference).

    Args use mamba-ssm's layout: u, delta, z `(b, d, l)`; A `(d, n)`; B, C `(b, n, l)`; D, delta_bias `(d,)`;
    initial_state `(b, d, n)`. Returns `(y (b, d, l) float32, final_state (b, d, n) float32)`.
    """
    batch, dim, seq_len = u.shape
    dt = _step(delta, delta_bias, delta_softplus)
    dA = torch.exp(dt[..., None] * A.float()[None, :, None, :])  # (b, d, l, n)
    dBu = dt[..., None] * B.float().transpose(1, 2)[:, None] * u.float()[..., None]  # (b, d, l, n)
    h = u.new_zeros(batch, dim, A.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    ys = []
    for t in range(seq_len):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append((h * C.float()[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0, dtype=torch.float32)
    return _finish(y, u, D, z), h


def _scan_chunk(
    dt: torch.Tensor, dBu: torch.Tensor, A: torch.Tensor, C: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: dt (b, d, T), dBu (b, d, T, n), C (b, T, n), h (b, d, n) -> y (b, d, T), final h (b, d, n).

    h_t = decay(0..t) h0 + sum_{s<=t} decay(s+1..t) dBu_s for all t at once. The decay is diagonal, so with
    S_t = sum_{r<=t} dt_r A this is h_t = exp(S_t) * (h0 + cumsum_s(exp(-S_s) dBu_s)): O(T) work, whose rounding
    error stays at eps * sum |dBu| because exp(S_t - S_s) <= 1 for every term that reaches h_t. float32 while the
    chunk's decay allows it, float64 beyond.
    """
    log_decay = dt[..., None] * A[None, :, None, :]  # (b, d, T, n), <= 0
    cum = torch.cumsum(log_decay, dim=2)
    steps = dt.shape[-1]
    deepest = -cum[:, :, -1].min().item()
    if deepest > _MAX_FACTORIZED_DECAY[torch.float64]:  # exp(-S) would overflow: halve the chunk, or pairwise form
        if steps > 8:
            half = steps // 2
            y0, h = _scan_chunk(dt[..., :half], dBu[:, :, :half], A, C[:, :half], h)
            y1, h = _scan_chunk(dt[..., half:], dBu[:, :, half:], A, C[:, half:], h)
            return torch.cat([y0, y1], dim=-1), h
        states = torch.exp(cum).float() * h[:, :, None, :] + torch.einsum(
            "bdnts,bdsn->bdtn", torch.exp(segsum(log_decay.float().transpose(-1, -2))), dBu
        )
    else:
        if deepest > _MAX_FACTORIZED_DECAY[torch.float32]:
            cum = torch.cumsum(log_decay.double(), dim=2)  # float64 keeps exp(-S) finite
        h0 = h.to(cum.dtype)[:, :, None, :]
        states = (torch.exp(cum) * (h0 + torch.cumsum(torch.exp(-cum) * dBu.to(cum.dtype), dim=2))).float()
    y = torch.einsum("bdtn,btn->bdt", states, C)
    return y, states[:, :, -1]


def _scan_chunk_inputs(dt, u, Bt, Ct, A, h):
    dBu = dt[..., None] * Bt[:, None] * u[..., None]  # (b, d, T, n)
    return _scan_chunk(dt, dBu, A, Ct, h)


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_SCAN_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact selective scan from `initial_state`, parallel inside chunks of `chunk_size` steps.

    Same arguments and returns as `selective_scan_ref`. Decays are only ever multiplied over spans inside one chunk
    (`exp` of a sum of non-positive terms), so nothing overflows whatever `dt` and `A` are.
    """
    batch, dim, seq_len = u.shape
    A = A.float()
    dt = _step(delta, delta_bias, delta_softplus)
    Bt, Ct = B.float().transpose(1, 2), C.float().transpose(1, 2)  # (b, l, n)
    h = u.new_zeros(batch, dim, A.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    # With gradients, each chunk is recomputed in the backward pass: only its (b, d, T) and (b, T, n) inputs are
    # kept, not the (b, d, T, n) intermediates, so training memory grows like the model's activations, not x n.
    recompute = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias, initial_state)
    )
    ys = []
    for start in range(0, seq_len, chunk_size):
        chunk = slice(start, start + chunk_size)
        args = (dt[:, :, chunk], u[:, :, chunk].float(), Bt[:, chunk], Ct[:, chunk], A, h)
        if recompute:
            y, h = torch.utils.checkpoint.checkpoint(_scan_chunk_inputs, *args, use_reentrant=False)
        else:
            y, h = _scan_chunk_inputs(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0, dtype=torch.float32)
    return _finish(y, u, D, z), h


def initial_state_correction(
    dt: torch.Tensor, A: torch.Tensor, C: torch.Tensor, initial_state: torch.Tensor, chunk_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a nonzero initial state h0 adds to a zero-start scan.

    Args:
        dt (`(b, d, l)`): the discretized step (after bias and softplus). A `(d, n)`; C `(b, n, l)`; h0 `(b, d, n)`.

    Returns:
        `(y_correction (b, d, l), carried (b, d, n))`: `C_t . (decay(0..t) h0)` before the D skip and the gate, and
        `decay(0..l) h0`, the part of the final state that h0 contributes. Computed chunk by chunk so that the
        `(b, d, chunk, n)` decay tensor, not `(b, d, l, n)`, bounds the memory.
    """
    A = A.float()
    carried = initial_state.float()
    outs = []
    for start in range(0, dt.shape[-1], chunk_size):
        chunk = slice(start, start + chunk_size)
        decay = torch.exp(torch.cumsum(dt[:, :, chunk, None] * A[None, :, None, :], dim=2))  # (b, d, T, n)
        outs.append(torch.einsum("bdtn,bdn,bnt->bdt", decay, carried, C[:, :, chunk].float()))
        carried = decay[:, :, -1] * carried
    y = torch.cat(outs, dim=-1) if outs else dt.new_zeros(dt.shape)
    return y, carried


def selective_scan_from_zero_with_correction(
    scan_fn: Callable,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-start scan (`scan_fn`, mamba-ssm's `selective_scan_fn` signature) made to start from `initial_state`.

    The correction is added before the gate: y = (scan_0 + D u + corr) * silu(z), so the zero-start scan is run with
    `z=None` and the gate is applied here.
    """
    y0, last0 = scan_fn(u, delta, A, B, C, D, None, delta_bias, delta_softplus, True)
    y = y0.float()
    final_state = last0.float()
    if initial_state is not None:
        dt = _step(delta, delta_bias, delta_softplus)
        correction, carried = initial_state_correction(dt, A, C, initial_state)
        y = y + correction
        final_state = final_state + carried
    if z is not None:
        y = y * F.silu(z.float())
    return y, final_state
