"""Mamba-2 (`model_type="mamba2"`): the mixer's forward over a segment, from and to carried `initial_states`.

Per layer the state is `conv_state (intermediate_size + 2 * n_groups * state_size, conv_kernel)` and
`recurrent_state (num_heads, head_dim, state_size)` per row, transformers' `DynamicCache` layout.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from .base import Architecture, StatefulMixerMixin, StateShapes
from .delta import get_delta_transform
from .kernels import causal_conv1d_with_state, ssd_scan_with_state
from .ops import discretize


def mamba2_state_shapes(config: PretrainedConfig) -> StateShapes:
    intermediate = int(config.expand * config.hidden_size)
    if config.num_heads * config.head_dim != intermediate:
        raise ValueError(
            f"Mamba-2 config has num_heads * head_dim = {config.num_heads * config.head_dim} but "
            f"expand * hidden_size = {intermediate}; fix the config."
        )
    conv_dim = intermediate + 2 * config.n_groups * config.state_size
    return (conv_dim, config.conv_kernel), (config.num_heads, config.head_dim, config.state_size)


def mamba2_mixer_forward_with_state(
    mixer: Mamba2Mixer, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`Mamba2Mixer` forward over a segment, from and to a carried state.

    Returns `(contextualized_states (b, l, hidden), conv_state (b, conv_dim, K), ssm_state (b, h, p, n))`.
    """
    batch, seq_len, _ = hidden_states.shape
    dtype = hidden_states.dtype
    groups_time_state = mixer.n_groups * mixer.ssm_state_size

    # 1. Gated MLP's linear projection (a family may scale it: Falcon-H1's muP multipliers)
    project = getattr(mixer, "project_segment_inputs", None)
    projected_states = project(hidden_states) if project is not None else mixer.in_proj(hidden_states)
    gate, hidden_states_B_C, dt = projected_states.split(
        [mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1
    )

    # 2. Convolution over [carried window, segment]
    hidden_states_B_C, conv_state = causal_conv1d_with_state(
        hidden_states_B_C.transpose(1, 2), conv_state, mixer.conv1d.weight, mixer.conv1d.bias, mixer.activation
    )
    x, B, C = torch.split(
        hidden_states_B_C.transpose(1, 2), [mixer.intermediate_size, groups_time_state, groups_time_state], dim=-1
    )
    x = x.reshape(batch, seq_len, mixer.num_heads, mixer.head_dim)
    B = B.reshape(batch, seq_len, mixer.n_groups, mixer.ssm_state_size)
    C = C.reshape(batch, seq_len, mixer.n_groups, mixer.ssm_state_size)
    A = -torch.exp(mixer.A_log.float())
    dt_bias, dt_limit, dt_softplus = mixer.dt_bias, mixer.time_step_limit, True
    transform = get_delta_transform(mixer)
    if transform is not None:  # a length extension (`delta.py`): Δ discretized here, transformed, used as it is
        dt = transform(discretize(dt, dt_bias, True, dt_limit), channel_dim=-1)
        dt_bias, dt_limit, dt_softplus = None, (0.0, float("inf")), False

    # 3. SSM from the carried `initial_states`
    y, ssm_state = ssd_scan_with_state(
        x,
        dt,
        A,
        B,
        C,
        chunk_size=mixer.chunk_size,
        D=mixer.D,
        dt_bias=dt_bias,
        dt_limit=dt_limit,
        initial_states=ssm_state,
        dt_softplus=dt_softplus,
    )

    # 4. Gated norm and final linear projection
    gated_norm = getattr(mixer, "gated_norm", mixer.norm)
    scan_output = gated_norm(y.reshape(batch, seq_len, -1), gate)
    contextualized_states = mixer.out_proj(scan_output.to(dtype))
    return contextualized_states, conv_state, ssm_state


class StatefulMamba2Mixer(StatefulMixerMixin, Mamba2Mixer):
    segment_forward = force_accelerate_hooks("conv1d")(mamba2_mixer_forward_with_state)


ARCHITECTURE = Architecture(
    model_types=("mamba2",),
    display_name="Mamba-2",
    lora_target_modules=("in_proj",),
    state_shapes=mamba2_state_shapes,
    stateful_mixers={Mamba2Mixer: StatefulMamba2Mixer},
)
