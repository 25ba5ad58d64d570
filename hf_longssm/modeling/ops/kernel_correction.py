"""The gradient that mamba-ssm's Mamba-1 kernel leaves out: the one through the final state of its zero-start scan.

`selective_scan_fn(..., return_last_state=True)` returns the last state, but `SelectiveScanFn.backward` receives only
the output's gradient ("the gradient of the last state is not considered in the backward pass", its docstring). Carried
across segments (backpropagation through an attached state, or a loss on the state), that gradient is real: without it
the kernel path's parameter gradients were off by up to 140% on tiny models.

`attach_final_state_gradient` puts it back. Its forward only passes the kernel's last state on; its backward runs
only when the final state's gradient reaches it, so a detached state (TBTT, evaluation) costs nothing. The backward
recomputes, chunk by chunk, the zero-start final state

    h_L = sum_s exp(A * sum_{s<r<=L} dt_r) * dt_s * B_s * u_s,      dt = softplus(delta + delta_bias),

in two passes: forward for the state entering each chunk (no graph), then backward from the last chunk, where each
chunk's `h_end = exp(A * sum dt) * h_start + local` is differentiated on its own and the adjoint is carried to the
previous chunk by the chunk's decay. Memory is that of one `(b, d, chunk, n)` chunk, never `(b, d, l, n)`; nothing
reads a value back to the host.

Shape legend (mamba-ssm's layout): b = batch, d = channels, l = sequence, n = SSM state size.
"""

from __future__ import annotations

import torch

from .common import discretize


# Steps per chunk of the recomputation; memory is a few (b, d, chunk, n) float32 tensors (as the torch scan's chunk).
FINAL_STATE_GRADIENT_CHUNK = 128


def _chunk_end_state(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    h_start: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of the scan: u, delta `(b, d, T)`, B `(b, n, T)`, h_start `(b, d, n)` -> `(h_end, chunk decay)`.

    Every exponent is `A * (a sum of steps) <= 0`, so nothing overflows whatever dt and A are.
    """
    dt = discretize(delta, None if delta_bias is None else delta_bias[:, None], delta_softplus)  # (b, d, T)
    A = A.float()
    to_end = dt.flip(-1).cumsum(-1).flip(-1) - dt  # sum_{s<r<=T} dt_r, exact at the last step
    weights = torch.exp(to_end[..., None] * A[None, :, None, :])  # (b, d, T, n)
    dBu = (dt * u.float())[..., None] * B.float().transpose(1, 2)[:, None]  # (b, d, T, n)
    decay = torch.exp(dt.sum(-1)[..., None] * A)  # (b, d, n)
    return decay * h_start + (weights * dBu).sum(2), decay


def zero_start_final_state(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    chunk_size: int = FINAL_STATE_GRADIENT_CHUNK,
) -> torch.Tensor:
    """The final state `(b, d, n)` of the selective scan from zero, in torch (differentiable; a reference for the
    kernel's last state). Args in mamba-ssm's layout: u, delta `(b, d, l)`; A `(d, n)`; B `(b, n, l)`."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[-1], dtype=torch.float32)
    for start in range(0, u.shape[-1], chunk_size):
        chunk = slice(start, start + chunk_size)
        h, _ = _chunk_end_state(u[..., chunk], delta[..., chunk], A, B[..., chunk], delta_bias, delta_softplus, h)
    return h


class _FinalStateGradient(torch.autograd.Function):
    """Identity on the kernel's last state in the forward; the last state's gradient into (u, delta, A, B,
    delta_bias) in the backward."""

    @staticmethod
    def forward(ctx, last_state, u, delta, A, B, delta_bias, delta_softplus, chunk_size):
        ctx.set_materialize_grads(False)  # an unused final state gets None: nothing to compute
        ctx.save_for_backward(u, delta, A, B, delta_bias)
        ctx.delta_softplus, ctx.chunk_size = delta_softplus, chunk_size
        return last_state.clone()

    @staticmethod
    def backward(ctx, grad_final):
        if grad_final is None:
            return (None,) * 8
        inputs = ctx.saved_tensors
        u, delta, A, B, delta_bias = inputs
        needs = ctx.needs_input_grad[1:6]
        seq_len = u.shape[-1]
        starts = list(range(0, seq_len, ctx.chunk_size))
        # 1. The state entering each chunk (no graph).
        h_starts = []
        h = u.new_zeros(u.shape[0], u.shape[1], A.shape[-1], dtype=torch.float32)
        with torch.no_grad():
            for start in starts:
                h_starts.append(h)
                chunk = slice(start, start + ctx.chunk_size)
                h, _ = _chunk_end_state(
                    u[..., chunk], delta[..., chunk], A, B[..., chunk], delta_bias, ctx.delta_softplus, h
                )
        # 2. Backward from the last chunk; `adjoint` is d(loss)/d(state at the chunk's end).
        totals = [torch.zeros_like(t) if t is not None and need else None for t, need in zip(inputs, needs)]
        adjoint = grad_final.float()
        for start, h_start in zip(reversed(starts), reversed(h_starts)):
            chunk = slice(start, start + ctx.chunk_size)
            with torch.enable_grad():
                leaves = [
                    t.detach().requires_grad_(True) if t is not None else None
                    for t in (u[..., chunk], delta[..., chunk], A, B[..., chunk], delta_bias)
                ]
                h_end, decay = _chunk_end_state(*leaves[:4], leaves[4], ctx.delta_softplus, h_start)
                wanted = [leaf for leaf, total in zip(leaves, totals) if total is not None]
                grads = iter(torch.autograd.grad(h_end, wanted, adjoint) if wanted else ())
            for i, total in enumerate(totals):
                if total is None:
                    continue
                if i in (2, 4):  # A and delta_bias: shared by every chunk
                    total += next(grads)
                else:
                    total[..., chunk] = next(grads)
            adjoint = adjoint * decay.detach()
        return None, *totals, None, None


def attach_final_state_gradient(
    last_state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    chunk_size: int = FINAL_STATE_GRADIENT_CHUNK,
) -> torch.Tensor:
    """`last_state` (the zero-start kernel's final state `(b, d, n)`, whose gradient the kernel drops) made to carry
    its gradient into u, delta, A, B and delta_bias. Without autograd, or with no input requiring grad, it is returned
    as is; with them, the extra work happens in the backward and only if the final state is used."""
    inputs = (u, delta, A, B, delta_bias)
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in inputs):
        return last_state
    return _FinalStateGradient.apply(last_state.detach(), u, delta, A, B, delta_bias, delta_softplus, chunk_size)
