"""What the Gated DeltaNet hybrids of transformers share (Qwen3-Next, Qwen3.5, OLMo-Hybrid): linear-attention layers
whose state is, as a Mamba layer's, a conv window and a recurrent state, beside full-attention layers.

Per linear-attention layer, in transformers' `DynamicCache` layout: `conv_state (2 * key_dim + value_dim,
linear_conv_kernel_dim)` (the short conv over the concatenated queries, keys and values) and `recurrent_state
(linear_num_value_heads, linear_key_head_dim, linear_value_head_dim)` (one `k x v` matrix per value head). Layer kinds
come from `config.layer_types`; the attention layers take the cache's `update` as the other hybrids' do (`hybrid.py`).

A family's mixer subclass says how its layer projects a segment (`segment_projections`) and finishes it
(`segment_output`); the conv and the gated delta rule in between are the same for all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig
from transformers.integrations.accelerate import force_accelerate_hooks

from .base import LAYER_NONE, StatefulMixerMixin, StateShapes
from .hybrid import BLOCK_KINDS
from .kernels import causal_conv1d_with_state, gated_delta_rule_with_state


def layer_type_kinds(config: PretrainedConfig) -> list[str]:
    """Per layer: linear attention (a carried conv window and matrix state), full attention or none."""
    return [BLOCK_KINDS.get(kind, LAYER_NONE) for kind in config.layer_types]


def gated_deltanet_state_shapes(config: PretrainedConfig) -> StateShapes:
    key_dim = config.linear_num_key_heads * config.linear_key_head_dim
    value_heads = config.linear_num_value_heads
    if value_heads % config.linear_num_key_heads:
        raise ValueError(
            f"linear_num_value_heads={value_heads} is not a multiple of linear_num_key_heads="
            f"{config.linear_num_key_heads}; fix the config."
        )
    conv_dim = 2 * key_dim + value_heads * config.linear_value_head_dim
    return (conv_dim, config.linear_conv_kernel_dim), (
        value_heads,
        config.linear_key_head_dim,
        config.linear_value_head_dim,
    )


def gated_deltanet_forward_with_state(
    mixer: torch.nn.Module, hidden_states: torch.Tensor, conv_state: torch.Tensor, recurrent_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Gated DeltaNet layer's forward over a segment, from and to a carried state.

    Returns `(output (b, l, hidden), conv_state (b, conv_dim, K), recurrent_state (b, h, k, v))`.
    """
    batch, seq_len, _ = hidden_states.shape
    # 1. The family's projections: the conv's input (queries, keys, values), the output gate, beta and the decay's a
    mixed_qkv, gate, beta, a = mixer.segment_projections(hidden_states)

    # 2. Short conv over [carried window, segment]
    mixed_qkv, conv_state = causal_conv1d_with_state(
        mixed_qkv.transpose(1, 2), conv_state, mixer.conv1d.weight, mixer.conv1d.bias, mixer.activation
    )
    query, key, value = torch.split(mixed_qkv.transpose(1, 2), [mixer.key_dim, mixer.key_dim, mixer.value_dim], -1)
    query = query.reshape(batch, seq_len, -1, mixer.head_k_dim)
    key = key.reshape(batch, seq_len, -1, mixer.head_k_dim)
    value = value.reshape(batch, seq_len, -1, mixer.head_v_dim)

    # 3. The gated delta rule from the carried state (the decay in float32, as transformers computes it)
    g = -mixer.A_log.float().exp() * F.softplus(a.float() + mixer.dt_bias)
    out, recurrent_state = gated_delta_rule_with_state(query, key, value, g, beta, recurrent_state)

    # 4. The family's gated norm and output projection
    return mixer.segment_output(out.to(query.dtype), gate), conv_state, recurrent_state


class StatefulGatedDeltaNetMixin(StatefulMixerMixin):
    """Mixed into a Gated DeltaNet layer class: its segment forward is `gated_deltanet_forward_with_state`."""

    segment_forward = force_accelerate_hooks("conv1d")(gated_deltanet_forward_with_state)
    takes_delta_transform = False  # MambaExtend and LongMamba are defined on Mamba's Δ

    def segment_output(self, out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Qwen3-Next's and Qwen3.5's: the gated RMS norm per value head (`norm`), then `out_proj`."""
        batch, seq_len = out.shape[:2]
        out = self.norm(out.reshape(-1, self.head_v_dim), gate.reshape(-1, self.head_v_dim))
        return self.out_proj(out.reshape(batch, seq_len, -1))
