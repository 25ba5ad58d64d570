"""Zamba2 (`model_type="zamba2"`, Zyphra): Mamba-2 layers, and at the "hybrid" layers a shared attention block (fed
the layer's input concatenated with the original embeddings, with per-layer LoRA adapters) before the Mamba-2 layer;
those layers carry both an SSM state and keys/values."""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.models.zamba2.modeling_zamba2 import Zamba2MambaMixer

from .base import Architecture, StateShapes
from .hybrid import StatefulMamba2LikeMixer, block_kinds, mamba2_like_shapes


def zamba2_state_shapes(config: PretrainedConfig) -> StateShapes:
    intermediate = int(config.mamba_expand * config.hidden_size)
    return mamba2_like_shapes(
        intermediate, config.mamba_ngroups, config.mamba_d_state, config.mamba_d_conv, config.n_mamba_heads
    )


def zamba2_kv_shape(config: PretrainedConfig) -> tuple[int, int]:
    return config.num_key_value_heads, config.attention_head_dim


class StatefulZamba2MambaMixer(StatefulMamba2LikeMixer, Zamba2MambaMixer):
    pass


ARCHITECTURE = Architecture(
    model_types=("zamba2",),
    display_name="Zamba2",
    lora_target_modules=("in_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=zamba2_state_shapes,
    stateful_mixers={Zamba2MambaMixer: StatefulZamba2MambaMixer},
    layer_kinds=block_kinds,
    kv_shape=zamba2_kv_shape,
)
