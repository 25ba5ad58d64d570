"""Bamba (`model_type="bamba"`, IBM): Mamba-2 layers with full-attention layers (RoPE) at `attn_layer_indices`."""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.models.bamba.modeling_bamba import BambaMixer

from .base import Architecture, StateShapes
from .hybrid import StatefulMamba2LikeMixer, attention_kv_shape, block_kinds, mamba2_like_shapes


def bamba_state_shapes(config: PretrainedConfig) -> StateShapes:
    intermediate = int(config.mamba_expand * config.hidden_size)
    return mamba2_like_shapes(
        intermediate, config.mamba_n_groups, config.mamba_d_state, config.mamba_d_conv, config.mamba_n_heads
    )


class StatefulBambaMixer(StatefulMamba2LikeMixer, BambaMixer):
    pass


ARCHITECTURE = Architecture(
    model_types=("bamba",),
    display_name="Bamba",
    lora_target_modules=("in_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=bamba_state_shapes,
    stateful_mixers={BambaMixer: StatefulBambaMixer},
    layer_kinds=block_kinds,
    kv_shape=attention_kv_shape,
)
