"""RWKV-6 (`model_type="rwkv6"`, flash-linear-attention's `RWKV6ForCausalLM`, "Finch"; checkpoints under `fla-hub/`):
the paper's other Figure 1 family. Every layer a time-mixing attention (data-dependent token-shift mixes, a decay per
key channel and a bonus for the current token) and a channel-mixing feed-forward block, each with a token shift. Per
layer, in fla's cache layout (the state kinds of RWKV-7, `rwkv7.RWKV7_STATES`):

* `shift_states (hidden_size)`: the attention's token shift (fla's `conv_state`; a window);
* `recurrent_states (num_heads, head_k_dim, head_v_dim)`: the matrix state (`ops/gla.py`, `rwkv6_chunked`; fla's
  `recurrent_state`);
* `ffn_shift_states (hidden_size)`: the feed-forward block's token shift (fla's `ffn_state`; a window).

The model code is fla's (`pip install "hf-longssm[fla]"`); hf_longssm's layer classes and segment forwards are in
`fla_layers.py`: fla's `chunk_rwkv6` on CUDA, the exact chunked torch path elsewhere.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .base import Architecture, StateShapes
from .gla import fla_mixers, fla_to_cache, import_fla, prepare_fla_model
from .rwkv7 import FLA_CACHE_ENTRIES, RWKV7_STATES


def rwkv6_state_shapes(config: PretrainedConfig) -> StateShapes:
    if getattr(config, "attn", None):
        raise ValueError(
            "RWKV-6 with attention layers (config.attn) is not supported by hf_longssm yet: use a config without them."
        )
    heads = config.num_heads
    # fla's layer rounds (`round(hidden_size * expand_k)`)
    key_dim, value_dim = round(config.hidden_size * config.expand_k), round(config.hidden_size * config.expand_v)
    return (config.hidden_size,), (heads, key_dim // heads, value_dim // heads), (config.hidden_size,)


ARCHITECTURE = Architecture(
    model_types=("rwkv6",),
    display_name="RWKV-6",
    lora_target_modules=("r_proj.linear", "k_proj.linear", "v_proj.linear", "g_proj.linear", "o_proj"),
    state_shapes=rwkv6_state_shapes,
    stateful_mixers=fla_mixers("RWKV6_CLASSES"),
    state_kinds=RWKV7_STATES,
    to_cache=fla_to_cache(FLA_CACHE_ENTRIES),
    generate_from_cache=False,  # fla's generate needs its own cache bookkeeping: decode through the state
    register_model_code=import_fla,
    prepare=prepare_fla_model,
    model_computes_loss=False,  # fla's loss shifts labels itself (and is Triton-only when fused)
)
