"""Nemotron-H (`model_type="nemotron_h"`, NVIDIA): Mamba-2 layers, attention layers (no positional encoding) and
MLP / MoE layers, one kind per layer (`hybrid_override_pattern` "M", "*", "-", "E")."""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

from .base import Architecture, StateShapes
from .hybrid import StatefulMamba2LikeMixer, attention_kv_shape, block_kinds, mamba2_like_shapes


def nemotron_h_state_shapes(config: PretrainedConfig) -> StateShapes:
    intermediate = config.mamba_num_heads * config.mamba_head_dim
    return mamba2_like_shapes(
        intermediate, config.n_groups, config.ssm_state_size, config.conv_kernel, config.mamba_num_heads
    )


class StatefulNemotronHMamba2Mixer(StatefulMamba2LikeMixer, NemotronHMamba2Mixer):
    pass


ARCHITECTURE = Architecture(
    model_types=("nemotron_h",),
    display_name="Nemotron-H",
    lora_target_modules=("in_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=nemotron_h_state_shapes,
    stateful_mixers={NemotronHMamba2Mixer: StatefulNemotronHMamba2Mixer},
    layer_kinds=block_kinds,
    kv_shape=attention_kv_shape,
)
