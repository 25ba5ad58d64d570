"""Qwen3-Next (`model_type="qwen3_next"`): Gated DeltaNet and gated full-attention layers (`gated_deltanet.py`)."""

from __future__ import annotations

import torch
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet

from .base import Architecture
from .gated_deltanet import StatefulGatedDeltaNetMixin, gated_deltanet_state_shapes, layer_type_kinds
from .hybrid import attention_kv_shape


class StatefulQwen3NextGatedDeltaNet(StatefulGatedDeltaNetMixin, Qwen3NextGatedDeltaNet):
    def segment_projections(self, hidden_states: torch.Tensor):
        """Queries, keys, values (fused, per key head) and the output gate `z` from `in_proj_qkvz`; beta and a from
        `in_proj_ba` (transformers' `fix_query_key_value_ordering`)."""
        query, key, value, z, b, a = self.fix_query_key_value_ordering(
            self.in_proj_qkvz(hidden_states), self.in_proj_ba(hidden_states)
        )
        mixed_qkv = torch.cat([x.reshape(x.shape[0], x.shape[1], -1) for x in (query, key, value)], dim=-1)
        return mixed_qkv, z, b.sigmoid(), a


ARCHITECTURE = Architecture(
    model_types=("qwen3_next",),
    display_name="Qwen3-Next",
    lora_target_modules=("in_proj_qkvz", "in_proj_ba", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=gated_deltanet_state_shapes,
    stateful_mixers={Qwen3NextGatedDeltaNet: StatefulQwen3NextGatedDeltaNet},
    layer_kinds=layer_type_kinds,
    kv_shape=attention_kv_shape,
)
