"""The two helpers every scan shares: the discretised step and stable segment sums of log-decays."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discretize(
    dt: torch.Tensor,
    dt_bias: torch.Tensor | None = None,
    softplus: bool = True,
    dt_limit: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The step size in float32: `softplus(dt + dt_bias)` (softplus optional), clamped to `dt_limit` if given.

    Args:
        dt (`torch.Tensor`): the raw step, any layout.
        dt_bias (`torch.Tensor`, *optional*): already shaped to broadcast against `dt` (e.g. `(d, 1)` for Mamba-1's
            `(b, d, l)`, `(h,)` for Mamba-2's `(b, l, h)`).
        softplus (`bool`, *optional*, defaults to `True`): apply softplus after the bias.
        dt_limit (`tuple[float, float]`, *optional*): Mamba-2's `time_step_limit`; `(0, inf)` means no clamp.
    """
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if softplus:
        dt = F.softplus(dt)
    if dt_limit is not None and tuple(dt_limit) != (0.0, float("inf")):
        dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])
    return dt


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: `out[..., t, s] = sum_{s < r <= t} x[..., r]` for s <= t, `-inf` above the diagonal.

    The sums are accumulated per (t, s) pair, not as differences of one cumulative sum, which would cancel
    catastrophically in float32 once the cumulative decay is large. `exp(segsum(log_decay))` is the decay from
    position s to position t (mamba's `ssd_minimal.segsum`).
    """
    steps = x.shape[-1]
    x = x[..., None].expand(*x.shape, steps)
    strict = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril(-1)
    x = torch.cumsum(x.masked_fill(~strict, 0), dim=-2)
    return x.masked_fill(~torch.ones_like(strict).tril(), float("-inf"))
