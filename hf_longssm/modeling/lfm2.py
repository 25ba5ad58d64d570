"""LFM2 (`model_type="lfm2"`, Liquid AI) and LFM2-MoE (`"lfm2_moe"`): gated short-convolution layers beside
full-attention layers. A conv layer's whole state is its window: `conv_states (hidden_size, conv_L_cache)`, the last
`conv_L_cache` inputs of the conv (transformers' `DynamicCache` layout). Layer kinds come from `config.layer_types`
(`"conv"`, `"full_attention"`).

A segment's conv layer: `B, C, x = in_proj(h)`, then `y = C * conv([carried window, B * x])` and `out_proj(y)`.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv
from transformers.models.lfm2_moe.modeling_lfm2_moe import Lfm2MoeShortConv

from .base import Architecture, StatefulMixerMixin, StateKind, StateShapes
from .gated_deltanet import layer_type_kinds
from .hybrid import attention_kv_shape
from .kernels import causal_conv1d_with_state


CONV_WINDOW = (StateKind("conv_states", window=True),)


def lfm2_state_shapes(config: PretrainedConfig) -> StateShapes:
    return ((config.hidden_size, config.conv_L_cache),)


def lfm2_short_conv_forward_with_state(
    mixer: torch.nn.Module, hidden_states: torch.Tensor, conv_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """An LFM2 short-conv layer over a segment, from and to its carried window.

    Returns `(output (b, l, hidden), conv_state (b, hidden, conv_L_cache))`.
    """
    B, C, x = mixer.in_proj(hidden_states).transpose(-1, -2).chunk(3, dim=-2)
    conv_out, conv_state = causal_conv1d_with_state(B * x, conv_state, mixer.conv.weight, mixer.conv.bias, None)
    return mixer.out_proj((C * conv_out).transpose(-1, -2).contiguous()), conv_state


class StatefulLfm2ShortConvMixin(StatefulMixerMixin):
    segment_forward = force_accelerate_hooks("conv")(lfm2_short_conv_forward_with_state)
    takes_delta_transform = False  # no Δ: MambaExtend and LongMamba do not apply


class StatefulLfm2ShortConv(StatefulLfm2ShortConvMixin, Lfm2ShortConv):
    pass


class StatefulLfm2MoeShortConv(StatefulLfm2ShortConvMixin, Lfm2MoeShortConv):
    pass


ARCHITECTURE = Architecture(
    model_types=("lfm2", "lfm2_moe"),
    display_name="LFM2",
    lora_target_modules=("in_proj", "out_proj", "q_proj", "k_proj", "v_proj"),
    state_shapes=lfm2_state_shapes,
    stateful_mixers={Lfm2ShortConv: StatefulLfm2ShortConv, Lfm2MoeShortConv: StatefulLfm2MoeShortConv},
    state_kinds=CONV_WINDOW,
    layer_kinds=layer_type_kinds,
    kv_shape=attention_kv_shape,
)
