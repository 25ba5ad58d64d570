"""Jamba (`model_type="jamba"`, AI21): Mamba-1 layers (with RMS norms on dt, B and C, as FalconMamba) and attention
layers without positional encoding, every other layer followed by a mixture of experts."""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

from .base import Architecture, StatefulMixerMixin, StateShapes
from .hybrid import attention_kv_shape, block_kinds
from .mamba import mamba_mixer_forward_with_state


def jamba_state_shapes(config: PretrainedConfig) -> StateShapes:
    intermediate = config.mamba_expand * config.hidden_size
    return (intermediate, config.mamba_d_conv), (intermediate, config.mamba_d_state)


class StatefulJambaMambaMixer(StatefulMixerMixin, JambaMambaMixer):
    segment_forward = force_accelerate_hooks(["conv1d", "dt_proj"])(mamba_mixer_forward_with_state)

    def normalize_ssm_inputs(self, time_step, B, C):
        return self.dt_layernorm(time_step), self.b_layernorm(B), self.c_layernorm(C)


ARCHITECTURE = Architecture(
    model_types=("jamba",),
    display_name="Jamba",
    lora_target_modules=("in_proj", "x_proj", "q_proj", "k_proj", "v_proj", "o_proj"),
    state_shapes=jamba_state_shapes,
    stateful_mixers={JambaMambaMixer: StatefulJambaMambaMixer},
    layer_kinds=block_kinds,
    kv_shape=attention_kv_shape,
)
