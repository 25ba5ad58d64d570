"""Qwen3.5-MoE's language model (`model_type="qwen3_5_moe_text"`): Qwen3.5's Gated DeltaNet layers (`qwen3_5.py`)
with mixture-of-experts MLPs."""

from __future__ import annotations

from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeGatedDeltaNet

from .base import Architecture
from .gated_deltanet import StatefulGatedDeltaNetMixin, gated_deltanet_state_shapes, layer_type_kinds
from .hybrid import attention_kv_shape
from .qwen3_5 import qwen3_5_projections


class StatefulQwen3_5MoeGatedDeltaNet(StatefulGatedDeltaNetMixin, Qwen3_5MoeGatedDeltaNet):
    segment_projections = qwen3_5_projections


ARCHITECTURE = Architecture(
    model_types=("qwen3_5_moe_text",),
    display_name="Qwen3.5-MoE",
    lora_target_modules=("in_proj_qkv", "in_proj_z", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=gated_deltanet_state_shapes,
    stateful_mixers={Qwen3_5MoeGatedDeltaNet: StatefulQwen3_5MoeGatedDeltaNet},
    layer_kinds=layer_type_kinds,
    kv_shape=attention_kv_shape,
)
