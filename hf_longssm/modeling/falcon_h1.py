"""Falcon-H1 (`model_type="falcon_h1"`, TII): every layer runs a Mamba-2 mixer and RoPE attention side by side (with
muP multipliers), so every layer carries both an SSM state and keys/values."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1Mixer

from .base import Architecture, StateShapes
from .hybrid import StatefulMamba2LikeMixer, attention_kv_shape, block_kinds, mamba2_like_shapes


def falcon_h1_state_shapes(config: PretrainedConfig) -> StateShapes:
    intermediate = config.mamba_d_ssm or int(config.mamba_expand * config.hidden_size)
    return mamba2_like_shapes(
        intermediate, config.mamba_n_groups, config.mamba_d_state, config.mamba_d_conv, config.mamba_n_heads
    )


class StatefulFalconH1Mixer(StatefulMamba2LikeMixer, FalconH1Mixer):
    """Mamba-2's segment forward with Falcon-H1's two differences: scaled input projections, optional gated norm."""

    def project_segment_inputs(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.in_proj(hidden_states * self.ssm_in_multiplier) * self.mup_vector

    def gated_norm(self, scan_output: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        if self.mamba_rms_norm:
            return self.norm(scan_output, gate)
        return scan_output * torch.nn.functional.silu(gate)


ARCHITECTURE = Architecture(
    model_types=("falcon_h1",),
    display_name="Falcon-H1",
    lora_target_modules=("in_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=falcon_h1_state_shapes,
    stateful_mixers={FalconH1Mixer: StatefulFalconH1Mixer},
    layer_kinds=block_kinds,
    kv_shape=attention_kv_shape,
)
