"""Mamba-1 (`model_type="mamba"`): the mixer's forward over a segment, from and to a carried state.

Per layer the state is `conv_state (intermediate_size, conv_kernel)` and `recurrent_state (intermediate_size,
state_size)` per row, transformers' `DynamicCache` layout. FalconMamba reuses this forward (`falcon_mamba.py`).
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.mamba.modeling_mamba import MambaMixer

from .base import Architecture, StatefulMixerMixin, StateShapes
from .delta import get_delta_transform
from .kernels import causal_conv1d_with_state, selective_scan_with_state
from .ops import discretize


def mamba_state_shapes(config: PretrainedConfig) -> StateShapes:
    return (config.intermediate_size, config.conv_kernel), (config.intermediate_size, config.state_size)


def mamba_mixer_forward_with_state(
    mixer: MambaMixer, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`MambaMixer` / `FalconMambaMixer` forward over a segment, from and to a carried state.

    Returns `(contextualized_states (b, l, hidden), conv_state (b, d, K), ssm_state (b, d, n))`.
    """
    dtype = hidden_states.dtype
    # 1. Gated MLP's linear projection
    projected_states = mixer.in_proj(hidden_states).transpose(1, 2)
    hidden_states_in, gate = projected_states.chunk(2, dim=1)

    # 2. Convolution over [carried window, segment]
    hidden_states_in, conv_state = causal_conv1d_with_state(
        hidden_states_in, conv_state, mixer.conv1d.weight, mixer.conv1d.bias, activation=mixer.activation
    )

    # 3. Input-dependent dt, B, C (FalconMamba normalizes them: `normalize_ssm_inputs`)
    time_step, B, C = torch.split(
        mixer.x_proj(hidden_states_in.transpose(1, 2)),
        [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
        dim=-1,
    )
    time_step, B, C = mixer.normalize_ssm_inputs(time_step, B, C)
    time_step = mixer.dt_proj.weight @ time_step.transpose(1, 2)  # (b, d, l), bias added in the scan
    A = -torch.exp(mixer.A_log.float())
    delta_bias, delta_softplus = mixer.dt_proj.bias.float(), True
    transform = get_delta_transform(mixer)
    if transform is not None:  # a length extension (`delta.py`): Δ discretized here, transformed, used as it is
        time_step = transform(discretize(time_step, delta_bias[:, None]), channel_dim=1)
        delta_bias, delta_softplus = None, False

    # 4. Selective scan from the carried SSM state
    scan_output, ssm_state = selective_scan_with_state(
        hidden_states_in,
        time_step,
        A,
        B.transpose(1, 2),
        C.transpose(1, 2),
        mixer.D.float(),
        gate,
        delta_bias,
        ssm_state,
        delta_softplus=delta_softplus,
    )

    # 5. Final linear projection
    contextualized_states = mixer.out_proj(scan_output.transpose(1, 2).to(dtype))
    return contextualized_states, conv_state, ssm_state


class StatefulMambaMixer(StatefulMixerMixin, MambaMixer):
    segment_forward = force_accelerate_hooks(["conv1d", "dt_proj"])(mamba_mixer_forward_with_state)

    def normalize_ssm_inputs(self, time_step, B, C):
        return time_step, B, C  # Mamba-1 uses them as projected


ARCHITECTURE = Architecture(
    model_types=("mamba",),
    display_name="Mamba",
    # Not `dt_proj`: the mixer reads `dt_proj.weight` directly (transformers' forward too), so a LoRA adapter there
    # would get no gradient and merging one would change the output.
    lora_target_modules=("in_proj", "x_proj"),
    state_shapes=mamba_state_shapes,
    stateful_mixers={MambaMixer: StatefulMambaMixer},
)
