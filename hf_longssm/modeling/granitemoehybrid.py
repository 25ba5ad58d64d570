"""Granite 4.0-H (`model_type="granitemoehybrid"`, IBM): Mamba-2 layers and attention layers (NoPE or RoPE), each
followed by a mixture of experts."""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer

from .base import Architecture, StateShapes
from .hybrid import StatefulMamba2LikeMixer, attention_kv_shape, block_kinds, mamba2_like_shapes


def granitemoehybrid_state_shapes(config: PretrainedConfig) -> StateShapes:
    intermediate = int(config.mamba_expand * config.hidden_size)
    return mamba2_like_shapes(
        intermediate, config.mamba_n_groups, config.mamba_d_state, config.mamba_d_conv, config.mamba_n_heads
    )


class StatefulGraniteMoeHybridMambaLayer(StatefulMamba2LikeMixer, GraniteMoeHybridMambaLayer):
    pass


ARCHITECTURE = Architecture(
    model_types=("granitemoehybrid",),
    display_name="Granite 4.0-H",
    lora_target_modules=("in_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=granitemoehybrid_state_shapes,
    stateful_mixers={GraniteMoeHybridMambaLayer: StatefulGraniteMoeHybridMambaLayer},
    layer_kinds=block_kinds,
    kv_shape=attention_kv_shape,
)
