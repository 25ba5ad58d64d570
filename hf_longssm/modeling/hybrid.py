"""What the hybrids of transformers share (GraniteMoeHybrid, Bamba, Nemotron-H, Zamba2, Falcon-H1, Jamba): layer
kinds read from `config.layers_block_type`, Mamba-2-like mixers with Mamba-2's attribute names (`in_proj`, `conv1d`,
`A_log`, `D`, `dt_bias`, `norm`, `out_proj`, `n_groups`, `ssm_state_size`...; Jamba's are Mamba-1's), attention
layers that take the cache's `update`.

The attention of a segment with a carried state sees the carried keys (rotated at their own positions) and the
segment's: `segment_attention_mask` is the causal mask over `[carried, segment]` that the hybrid's forward takes
pre-built (a dict of masks by layer type), and `forward_with_state` passes absolute `position_ids`.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.integrations.accelerate import force_accelerate_hooks

from .base import LAYER_ATTENTION, LAYER_BOTH, LAYER_NONE, LAYER_SSM, StatefulMixerMixin, StateShapes
from .mamba2 import mamba2_mixer_forward_with_state


# `config.layers_block_type` values (transformers 5.21-5.25) and what they hold.
BLOCK_KINDS = {
    "linear_attention": LAYER_SSM,  # Gated DeltaNet (Qwen3-Next, Qwen3.5, OLMo-Hybrid)
    "mamba": LAYER_SSM,
    "conv": LAYER_SSM,  # LFM2's short convolutions
    "full_attention": LAYER_ATTENTION,
    "attention": LAYER_ATTENTION,
    "hybrid": LAYER_BOTH,  # Falcon-H1: attention and Mamba-2 side by side; Zamba2: shared attention, then Mamba-2
}


def block_kinds(config: PretrainedConfig) -> list[str]:
    """Per layer: SSM, attention or none (MLP, MoE), from `config.layers_block_type`."""
    return [BLOCK_KINDS.get(block, LAYER_NONE) for block in config.layers_block_type]


def attention_kv_shape(config: PretrainedConfig) -> tuple[int, int]:
    """`(num_key_value_heads, head_dim)` of the attention layers."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_key_value_heads, head_dim


def mamba2_like_shapes(intermediate: int, n_groups: int, state_size: int, conv_kernel: int, heads: int) -> StateShapes:
    if intermediate % heads:
        raise ValueError(f"The Mamba layers' inner size {intermediate} is not a multiple of their {heads} heads.")
    return (intermediate + 2 * n_groups * state_size, conv_kernel), (heads, intermediate // heads, state_size)


def segment_attention_masks(
    config: PretrainedConfig, carried_valid: torch.Tensor, length: int, dtype: torch.dtype
) -> dict[str, torch.Tensor | None]:
    """The hybrid's masks by layer type for a segment of `length` tokens after the carried keys.

    Query `i` of the segment sees the carried keys marked valid in `carried_valid` (`BoolTensor[batch, carried]`,
    False where a row's document restarted) and segment keys `0..i`. The attention layers get it as a boolean mask
    (SDPA) or an additive one (eager); the SSM layers none (no padding).
    """
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"attn_implementation={implementation!r} with a carried state: hf_longssm builds the attention mask over "
            "[carried keys, segment] for 'sdpa' and 'eager'. Load the model with attn_implementation='sdpa'."
        )
    batch, carried = carried_valid.shape
    device = carried_valid.device
    if implementation == "sdpa" and carried == 0:
        # Nothing carried: no mask, and transformers' SDPA call takes its causal path (`is_causal`), as it does for
        # a plain forward; an explicit mask costs about 15% at 2k tokens on the CPU.
        mask = None
    else:
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        mask = torch.cat([carried_valid[:, None, :].expand(batch, length, carried), causal.expand(batch, -1, -1)], -1)
        mask = mask[:, None]  # (batch, 1, length, carried + length)
    if implementation == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    # Keyed by every name a hybrid may look its layers' masks up by (`layers_block_type` or `layer_types` values).
    masks: dict[str, torch.Tensor | None] = dict.fromkeys(
        getattr(config, "layers_block_type", None) or config.layer_types
    )
    for block, kind in BLOCK_KINDS.items():
        masks[block] = mask if kind == LAYER_ATTENTION else None
    return masks


class StatefulMamba2LikeMixer(StatefulMixerMixin):
    """Mixed into a hybrid's Mamba-2-like mixer class: its segment forward is Mamba-2's."""

    segment_forward = force_accelerate_hooks("conv1d")(mamba2_mixer_forward_with_state)
