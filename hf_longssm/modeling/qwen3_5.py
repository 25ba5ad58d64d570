"""Qwen3.5's language model (`model_type="qwen3_5_text"`, e.g. the text part of Qwen/Qwen3.5-0.8B): Gated DeltaNet and
gated full-attention layers (`gated_deltanet.py`)."""

from __future__ import annotations

import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

from .base import Architecture
from .gated_deltanet import StatefulGatedDeltaNetMixin, gated_deltanet_state_shapes, layer_type_kinds
from .hybrid import attention_kv_shape


def qwen3_5_projections(mixer: torch.nn.Module, hidden_states: torch.Tensor):
    """Separate projections: `in_proj_qkv`, the output gate `in_proj_z`, beta `in_proj_b`, a `in_proj_a`."""
    batch, seq_len, _ = hidden_states.shape
    z = mixer.in_proj_z(hidden_states).reshape(batch, seq_len, -1, mixer.head_v_dim)
    beta = mixer.in_proj_b(hidden_states).sigmoid()
    return mixer.in_proj_qkv(hidden_states), z, beta, mixer.in_proj_a(hidden_states)


class StatefulQwen3_5GatedDeltaNet(StatefulGatedDeltaNetMixin, Qwen3_5GatedDeltaNet):
    segment_projections = qwen3_5_projections


ARCHITECTURE = Architecture(
    model_types=("qwen3_5_text",),
    display_name="Qwen3.5",
    lora_target_modules=("in_proj_qkv", "in_proj_z", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=gated_deltanet_state_shapes,
    stateful_mixers={Qwen3_5GatedDeltaNet: StatefulQwen3_5GatedDeltaNet},
    layer_kinds=layer_type_kinds,
    kv_shape=attention_kv_shape,
)
