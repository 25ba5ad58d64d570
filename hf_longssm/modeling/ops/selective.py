"""Mamba-1 and FalconMamba: the selective scan started from a carried SSM state.

Three implementations of one function, all returning the output and the final state:

* `selective_scan_ref`: a step-by-step loop, the reference every other path is tested against;
* `selective_scan` (and `selective_scan_chunked`, its name in the kernel dispatch): plain PyTorch, exact in float32
  for any decay, with a hand-written backward that recomputes each chunk of `chunk_size` steps, so training memory is
  O(b d l) plus one chunk's (b, d, chunk, n). This is the CPU path and the GPU path without mamba-ssm;
* `selective_scan_from_zero_with_correction`: mamba-ssm's zero-start `selective_scan_fn` plus the exact correction for
  the initial state. The scan is linear in its initial state h0:
  y_t += C_t . (prod_{s<=t} exp(dt_s A)) h0 and h_T += (prod_{s<=T} exp(dt_s A)) h0.

Shape legend: b = batch, d = intermediate channels, l = sequence, n = SSM state size, T = steps of one chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .common import discretize


# Elements of one (T, b, d, n) chunk buffer (the backward holds four). Every pass over a chunk is one parallel region,
# and on a loaded CPU each region waits for a busy core: on 2 shared cores 2**20 (4 MiB, cache-sized) ran the
# (4, 256, 16, 2048) scan 4x slower than 2**23 (32 MiB), which costs 10-50% on one thread (cache misses). On
# accelerators each step of a chunk is a kernel launch, so chunks are longer there (64 MiB per buffer).
_CPU_CHUNK_ELEMENTS = 1 << 23
_ACCELERATOR_CHUNK_ELEMENTS = 1 << 24
# Shorter chunks would spend more time launching the per-chunk passes than scanning.
_MIN_CHUNK = 16
# exp() of arguments below about -87.3 returns a denormal float or zero, and torch's vectorised CPU exp takes a slow
# path (10-30x) for them. A decay of exp(-80) = 2e-35 already erases the state to float32 precision, so flooring the
# log-decay there changes no result but keeps extreme decays as fast as mild ones.
_LOG_DECAY_FLOOR = -80.0


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


# ----- the recurrence inside one chunk ---------------------------------------------------------------------------
# Both scans solve x[t] += a[t] * x[t - 1] (x[-1] = h) in place along dim 0, or x[t] += a[t] * x[t + 1] (x[T] = h)
# with `reverse`. They only multiply decays (all <= 1) and add, so nothing overflows and the rounding error is that of
# the loop reference, whatever the decay: the reason this file needs neither float64 nor a T x T pairwise form.
# `work` (like x) is scratch space for the blocked scan; without it that scan may overwrite the decays `a`.
def _scan_sequential_(
    x: torch.Tensor, a: torch.Tensor, h: torch.Tensor, reverse: bool, work: torch.Tensor | None
) -> None:
    """One fused multiply-add per step: the least work, the fastest on a CPU (a step costs microseconds there)."""
    xs, decays = x.unbind(0), a.unbind(0)
    previous = h
    for t in range(len(xs) - 1, -1, -1) if reverse else range(len(xs)):
        xs[t].addcmul_(decays[t], previous)
        previous = xs[t]


def _scan_blocked_(
    x: torch.Tensor, a: torch.Tensor, h: torch.Tensor, reverse: bool, work: torch.Tensor | None
) -> None:
    """The same recurrence in about 3 sqrt(T) launches instead of T (for GPUs, where a step costs a kernel launch).

    The T steps are cut into M blocks of K: (1) every block is scanned from zero at once, K steps, while the decays
    are multiplied into each block's running product P; (2) the true block ends follow block by block,
    end[m] = local_end[m] + P_end[m] * end[m - 1], M steps; (3) one pass adds P * end[m - 1] to every inner step.
    P lives in `work` (in `a` without it); the trailing T mod K steps run sequentially.
    """
    steps = x.shape[0]
    block = max(1, math.isqrt(steps))
    blocks = steps // block
    if blocks < 2 or block < 2:
        _scan_sequential_(x, a, h, reverse, work)
        return
    main = blocks * block
    if reverse and main < steps:  # the tail comes first when scanning backwards
        _scan_sequential_(x[main:], a[main:], h, True, work)
        h = x[main]
    xb = x[:main].view(blocks, block, *x.shape[1:])
    products = a[:main] if work is None else work[:main].copy_(a[:main])
    pb = products.view(blocks, block, *a.shape[1:])
    toward_start = 1 if reverse else -1  # the neighbour each step reads
    for k in range(block - 2, -1, -1) if reverse else range(1, block):
        xb[:, k].addcmul_(pb[:, k], xb[:, k + toward_start])
        pb[:, k].mul_(pb[:, k + toward_start])
    end = 0 if reverse else block - 1  # the step each block hands to the next
    previous = h
    for m in range(blocks - 1, -1, -1) if reverse else range(blocks):
        xb[m, end].addcmul_(pb[m, end], previous)
        previous = xb[m, end]
    if reverse:
        incoming, inner = torch.cat([xb[1:, end], h[None]]), slice(1, block)
    else:
        incoming, inner = torch.cat([h[None], xb[:-1, end]]), slice(0, block - 1)
    xb[:, inner].addcmul_(pb[:, inner], incoming[:, None])
    if not reverse and main < steps:
        _scan_sequential_(x[main:], a[main:], x[main - 1], False, work)


def _chunk_scan_for(device: torch.device) -> Callable:
    return _scan_sequential_ if device.type == "cpu" else _scan_blocked_


def _default_chunk_size(u: torch.Tensor, state_size: int) -> int:
    batch, dim, seq_len = u.shape
    budget = _CPU_CHUNK_ELEMENTS if u.device.type == "cpu" else _ACCELERATOR_CHUNK_ELEMENTS
    return max(1, min(seq_len, max(_MIN_CHUNK, budget // max(1, batch * dim * state_size))))


def _decay(dt: torch.Tensor, A: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """exp(dt A) for dt `(T, b, d)` into `out` `(T, b, d, n)`, the log-decay floored (see `_LOG_DECAY_FLOOR`)."""
    torch.mul(dt[..., None], A, out=out)
    return out.clamp_(min=_LOG_DECAY_FLOOR).exp_()


def _scan_forward(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor,
    chunk_size: int,
    keep_chunk_starts: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, y_t = C_t . h_t, in time-major layout: u, dt `(l, b, d)`; A `(d, n)`;
    B, C `(l, b, n)`; h0 `(b, d, n)`; all float32 and contiguous. Returns y `(l, b, d)`, the final state and, with
    `keep_chunk_starts`, the state entering each chunk (what the backward recomputes from)."""
    seq_len, batch, dim = u.shape
    state_size = A.shape[-1]
    starts = range(0, seq_len, chunk_size)
    scan_ = _chunk_scan_for(u.device)
    y = u.new_empty(seq_len, batch, dim)
    chunk_starts = u.new_empty(len(starts), batch, dim, state_size) if keep_chunk_starts else None
    chunk = min(chunk_size, seq_len)
    states_buf, decay_buf = (u.new_empty(chunk, batch, dim, state_size) for _ in range(2))
    dtu = dt * u
    h = h0
    for i, s in enumerate(starts):
        e = min(s + chunk_size, seq_len)
        steps = e - s
        if chunk_starts is not None:
            chunk_starts[i] = h
        states = torch.mul(dtu[s:e, ..., None], B[s:e, :, None, :], out=states_buf[:steps])  # dt u B
        decay = _decay(dt[s:e], A, decay_buf[:steps])
        scan_(states, decay, h, False, None)  # the decays are not needed again
        # y_t = sum_n h_t C_t: a multiply and a reduction beat bmm's (d, n) @ (n, 1) batches on a CPU.
        torch.sum(torch.mul(states, C[s:e, :, None, :], out=decay_buf[:steps]), -1, out=y[s:e])
        h = states[-1].clone()
    return y, h, chunk_starts


class _SelectiveScanFunction(torch.autograd.Function):
    """`_scan_forward` with a hand-written backward.

    The forward keeps only its inputs and the state at each chunk start; the backward recomputes a chunk's states
    from there and runs the adjoint recurrence g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} backwards through it, so the
    (l, b, d, n) tensors of states and decays never exist at once (what mambapy's autograd keeps, several times over).
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk_size):
        y, h, chunk_starts = _scan_forward(u, dt, A, B, C, h0, chunk_size, keep_chunk_starts=True)
        ctx.save_for_backward(u, dt, A, B, C, chunk_starts)
        ctx.chunk_size = chunk_size
        return y, h

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        u, dt, A, B, C, chunk_starts = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        seq_len, batch, dim = u.shape
        state_size = A.shape[-1]
        chunk = min(chunk_size, seq_len)
        scan_ = _chunk_scan_for(u.device)
        dy = dy.contiguous()
        du, ddt, dB, dC = (torch.empty_like(t) for t in (u, dt, B, C))
        dA = torch.zeros_like(A)
        dtu = dt * u
        # The adjoint at step t is decayed by step t + 1's decay; one extra zero step makes the last decay exp(0) = 1.
        dt_next = torch.cat([dt, dt.new_zeros(1, batch, dim)])
        states_buf, adjoint_buf, work_buf = (u.new_empty(chunk, batch, dim, state_size) for _ in range(3))
        decay_buf = u.new_empty(chunk + 1, batch, dim, state_size)
        dtu_grad, ddt_decay = (u.new_empty(chunk, batch, dim) for _ in range(2))
        adjoint = dh.contiguous()  # dL/dh at the step after the chunk being processed
        starts = range(0, seq_len, chunk_size)
        for i in reversed(range(len(starts))):
            s = starts[i]
            e = min(s + chunk_size, seq_len)
            steps = e - s
            h_start = chunk_starts[i]
            work = work_buf[:steps]
            # 1. Recompute the chunk's states and the decays of steps s .. e (one past the chunk).
            states = torch.mul(dtu[s:e, ..., None], B[s:e, :, None, :], out=states_buf[:steps])
            decay = _decay(dt_next[s : e + 1], A, decay_buf[: steps + 1])
            scan_(states, decay[:steps], h_start, False, work_buf)
            # 2. dC_t = sum_d h_t dy_t.
            torch.sum(torch.mul(states, dy[s:e, ..., None], out=work), 2, out=dC[s:e])
            # 3. The adjoint g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}, backwards from the next chunk's.
            g = torch.mul(dy[s:e, ..., None], C[s:e, :, None, :], out=adjoint_buf[:steps])
            scan_(g, decay[1:], adjoint, True, work_buf)
            adjoint = g[0].clone()
            # 4. The gradient of the log-decay dt_t A is q_t = g_t exp(dt_t A) h_{t-1}; q overwrites the decays.
            q = decay[:steps].mul_(g)
            q[1:].mul_(states[:-1])
            q[0].mul_(h_start)
            torch.sum(torch.mul(q, A, out=work), -1, out=ddt_decay[:steps])
            dA += torch.mul(q, dt[s:e, ..., None], out=work).sum((0, 1))
            # 5. Through the input dt_t u_t B_t: dB_t = sum_d g_t dt_t u_t, and d(dt_t u_t) = sum_n g_t B_t.
            torch.sum(torch.mul(g, dtu[s:e, ..., None], out=work), 2, out=dB[s:e])
            torch.sum(torch.mul(g, B[s:e, :, None, :], out=work), -1, out=dtu_grad[:steps])
            torch.mul(dtu_grad[:steps], dt[s:e], out=du[s:e])
            torch.addcmul(ddt_decay[:steps], dtu_grad[:steps], u[s:e], out=ddt[s:e])
        dh0 = adjoint * _decay(dt[0], A, torch.empty_like(adjoint))  # h_0 enters step 0 through its decay
        return du, ddt, dA, dB, dC, dh0, None


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 / FalconMamba selective scan from a carried state, in plain PyTorch, exact in float32 for any decay.

    mamba-ssm's `selective_scan_fn` arguments and layouts, plus the state carried in and out.

    Args:
        u (`torch.Tensor` of shape `(b, d, l)`): the input (after the conv).
        delta (`torch.Tensor` of shape `(b, d, l)`): the raw step, before `delta_bias` and softplus.
        A (`torch.Tensor` of shape `(d, n)`): the (negative) state matrix diagonal, `-exp(A_log)`.
        B, C (`torch.Tensor` of shape `(b, n, l)`): the input-dependent input and output projections.
        D (`torch.Tensor` of shape `(d,)`, *optional*): the skip connection.
        z (`torch.Tensor` of shape `(b, d, l)`, *optional*): the gate, applied as `y * silu(z)`.
        delta_bias (`torch.Tensor` of shape `(d,)`, *optional*): added to `delta` before the softplus.
        delta_softplus (`bool`, *optional*, defaults to `False`): apply softplus to `delta + delta_bias`
            (mamba-ssm's default; the Mamba models set it).
        initial_state (`torch.Tensor` of shape `(b, d, n)`, *optional*): the carried SSM state; zeros if omitted.
        chunk_size (`int`, *optional*): steps recomputed together in the backward; memory grows with it. By default
            a chunk's `(chunk, b, d, n)` buffer holds 2**23 floats on a CPU and 2**24 elsewhere.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `y` of shape `(b, d, l)` and the final state `(b, d, n)`, both float32.
        Gradients flow to every tensor argument; nothing in the scan syncs with the host.
    """
    batch, dim, seq_len = u.shape
    state_size = A.shape[-1]
    if chunk_size is None:
        chunk_size = _default_chunk_size(u, state_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of steps, got {chunk_size}.")
    dt = _step(delta, delta_bias, delta_softplus)
    if initial_state is None:
        initial_state = u.new_zeros(batch, dim, state_size, dtype=torch.float32)
    if seq_len == 0:
        return u.new_zeros(batch, dim, 0, dtype=torch.float32), initial_state.float()

    def time_major(t: torch.Tensor) -> torch.Tensor:  # (b, x, l) -> (l, b, x): each step's slice is contiguous
        return t.float().permute(2, 0, 1).contiguous()

    inputs = (
        time_major(u),
        time_major(dt),
        A.float().contiguous(),
        time_major(B),
        time_major(C),
        initial_state.float().contiguous(),
        chunk_size,
    )
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs[:-1]):
        y, final_state = _SelectiveScanFunction.apply(*inputs)
    else:  # inference: no autograd node, no chunk starts kept
        y, final_state, _ = _scan_forward(*inputs, keep_chunk_starts=False)
    return _finish(y.permute(1, 2, 0), u, D, z), final_state


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
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selective_scan` under the name and defaults the kernel dispatch uses (`delta_softplus=True`, as in Mamba).

    Same arguments and returns as `selective_scan_ref`, plus `chunk_size` (see `selective_scan`).
    """
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_size)


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
