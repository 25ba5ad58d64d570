"""Depthwise causal conv1d that starts from a carried window and returns the window after the segment."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_conv_activation(activation: str | None) -> None:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"Unsupported conv activation {activation!r}; hf_longssm handles 'silu' (Mamba) or None.")


def next_conv_state(hidden_states: torch.Tensor, conv_state: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The window after the segment: the last `kernel_size` columns of [old window, segment] (also right for a
    segment shorter than the kernel). A fresh tensor, never a view of the input: the next segment may need the old
    one."""
    return torch.cat([conv_state.to(hidden_states.dtype), hidden_states], dim=-1)[..., -kernel_size:].contiguous()


def causal_conv1d_ref(
    hidden_states: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution of a segment whose left context is `conv_state` (the torch path).

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, dim, seq_len)`): the segment, channel-first as in transformers.
        conv_state (`torch.Tensor` of shape `(batch, dim, kernel)`): the last `kernel` inputs before the segment, laid
            out like transformers' `DynamicCache` conv state (only the last `kernel - 1` columns are read).
        weight (`torch.Tensor` of shape `(dim, 1, kernel)` or `(dim, kernel)`): the `nn.Conv1d` weight.
        bias (`torch.Tensor` of shape `(dim,)`, *optional*): the conv bias.
        activation (`str`, *optional*, defaults to `"silu"`): `"silu"` or `None`.

    Returns:
        `tuple(torch.Tensor, torch.Tensor)`: the activated conv output `(batch, dim, seq_len)` and the new conv state
        `(batch, dim, kernel)`.
    """
    check_conv_activation(activation)
    weight = weight.reshape(weight.shape[0], -1)
    seq_len = hidden_states.shape[-1]
    new_conv_state = next_conv_state(hidden_states, conv_state, weight.shape[-1])
    full = torch.cat([conv_state[..., 1:].to(hidden_states.dtype), hidden_states], dim=-1)
    out = F.conv1d(full.to(weight.dtype), weight.unsqueeze(1), bias, groups=weight.shape[0])[..., -seq_len:]
    if activation is not None:
        out = F.silu(out)
    return out.to(hidden_states.dtype), new_conv_state
