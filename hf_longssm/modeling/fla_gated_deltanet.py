"""flash-linear-attention's Gated DeltaNet (`model_type="gated_deltanet"`, `GatedDeltaNetForCausalLM`; checkpoints
under `fla-hub/`), the pure model (transformers' own Gated DeltaNet layers live in hybrids: `gated_deltanet.py`).
Per layer, in fla's cache layout:

* `q_conv_states (key_dim, conv_size)`, `k_conv_states (key_dim, conv_size)`, `v_conv_states (value_dim,
  conv_size)`: the windows of its three short convs (fla's `conv_state` tuple; windows);
* `recurrent_states (num_v_heads, head_v_dim, head_k_dim)`: the gated delta rule's state (`ops/gated_delta.py`; fla's
  `recurrent_state`, `state_v_first=True`).

The model code is fla's (`pip install "hf-longssm[fla]"`); hf_longssm's layer class and segment forward are in
`fla_layers.py`: fla's `chunk_gated_delta_rule` on CUDA, the exact chunked torch path elsewhere.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .base import Architecture, StateKind, StateShapes
from .gla import fla_mixers, fla_to_cache, import_fla, prepare_fla_model


FLA_GATED_DELTANET_STATES = (
    StateKind("q_conv_states", window=True),
    StateKind("k_conv_states", window=True),
    StateKind("v_conv_states", window=True),
    StateKind("recurrent_states"),
)
FLA_CACHE_ENTRIES = {
    "conv_state": ("q_conv_states", "k_conv_states", "v_conv_states"),
    "recurrent_state": "recurrent_states",
}


def fla_gated_deltanet_state_shapes(config: PretrainedConfig) -> StateShapes:
    unsupported = {
        "use_short_conv": not config.use_short_conv,
        "attn": getattr(config, "attn", None),
        "attnres_block_size": getattr(config, "attnres_block_size", None),
    }
    unsupported = {k: v for k, v in unsupported.items() if v}
    if unsupported:
        raise ValueError(
            f"fla's Gated DeltaNet without its short convs or with attention layers or attention residuals "
            f"({sorted(unsupported)}) is not supported by hf_longssm yet; fla-hub's checkpoints have none of them."
        )
    value_heads = config.num_v_heads or config.num_heads
    if value_heads % config.num_heads:
        raise ValueError(
            f"num_v_heads={value_heads} is not a multiple of num_heads={config.num_heads}: fix the config."
        )
    key_dim = config.num_heads * config.head_dim
    head_v_dim = int(config.head_dim * config.expand_v)
    conv = config.conv_size
    return (
        (key_dim, conv),
        (key_dim, conv),
        (value_heads * head_v_dim, conv),
        (value_heads, head_v_dim, config.head_dim),
    )


ARCHITECTURE = Architecture(
    model_types=("gated_deltanet",),
    display_name="Gated DeltaNet (fla)",
    lora_target_modules=("q_proj", "k_proj", "v_proj", "g_proj", "o_proj"),
    state_shapes=fla_gated_deltanet_state_shapes,
    stateful_mixers=fla_mixers("GATED_DELTANET_CLASSES"),
    state_kinds=FLA_GATED_DELTANET_STATES,
    to_cache=fla_to_cache(FLA_CACHE_ENTRIES),
    generate_from_cache=False,  # fla's generate needs its own cache bookkeeping: decode through the state
    register_model_code=import_fla,
    prepare=prepare_fla_model,
    model_computes_loss=False,  # fla's loss shifts labels itself (and is Triton-only when fused)
)
