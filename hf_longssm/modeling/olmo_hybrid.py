"""OLMo-Hybrid (`model_type="olmo_hybrid"`): Gated DeltaNet and full-attention layers (`gated_deltanet.py`); beta may
reach 2 (`linear_allow_neg_eigval`)."""

from __future__ import annotations

import torch
from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridGatedDeltaNet

from .base import Architecture
from .gated_deltanet import StatefulGatedDeltaNetMixin, gated_deltanet_state_shapes, layer_type_kinds
from .hybrid import attention_kv_shape


class StatefulOlmoHybridGatedDeltaNet(StatefulGatedDeltaNetMixin, OlmoHybridGatedDeltaNet):
    def segment_projections(self, hidden_states: torch.Tensor):
        """Separate `q_proj`, `k_proj`, `v_proj`, the gate `g_proj`, beta `b_proj` (doubled with negative
        eigenvalues allowed), a `a_proj`."""
        mixed_qkv = torch.cat([self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)], -1)
        beta = self.b_proj(hidden_states).sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2.0
        return mixed_qkv, self.g_proj(hidden_states), beta, self.a_proj(hidden_states)

    def segment_output(self, out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        batch, seq_len = out.shape[:2]
        out = self.o_norm(out.reshape(-1, self.head_v_dim), gate.reshape(-1, self.head_v_dim))
        return self.o_proj(out.reshape(batch, seq_len, -1))


ARCHITECTURE = Architecture(
    model_types=("olmo_hybrid",),
    display_name="OLMo-Hybrid",
    lora_target_modules=("q_proj", "k_proj", "v_proj", "g_proj", "o_proj"),
    state_shapes=gated_deltanet_state_shapes,
    stateful_mixers={OlmoHybridGatedDeltaNet: StatefulOlmoHybridGatedDeltaNet},
    layer_kinds=layer_type_kinds,
    kv_shape=attention_kv_shape,
)
