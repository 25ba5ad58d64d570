"""RWKV-7 (`model_type="rwkv7"`, flash-linear-attention's `RWKV7ForCausalLM`; checkpoints under `fla-hub/` and
`RWKV/`): every layer a time-mixing attention and a channel-mixing feed-forward block, each reading the previous token
through a token shift. Per layer, in fla's cache layout:

* `shift_states (hidden_size)`: the attention's token shift, the last token it read (fla's `conv_state`; a window);
* `recurrent_states (num_heads, head_dim, head_v_dim)`: the matrix state of the DPLR delta rule
  (`ops/dplr.py`; fla's `recurrent_state`);
* `ffn_shift_states (hidden_size)`: the feed-forward block's token shift (fla's `ffn_state`; a window).

The model code is fla's (`pip install "hf-longssm[fla]"`), imported only when an RWKV-7 model is loaded or prepared;
hf_longssm's layer classes and segment forwards are in `fla_layers.py`: fla's `chunk_dplr_delta_rule` on CUDA, the
exact chunked torch path elsewhere. The first layer's values (`v_first`), which later layers mix in, are per token:
nothing to carry.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .base import Architecture, StateKind, StateShapes
from .gla import fla_mixers, fla_to_cache, import_fla, prepare_fla_model


RWKV7_STATES = (
    StateKind("shift_states", window=True),
    StateKind("recurrent_states"),
    StateKind("ffn_shift_states", window=True),
)
# the state kind each entry of fla's cache holds
FLA_CACHE_ENTRIES = {
    "conv_state": "shift_states",
    "recurrent_state": "recurrent_states",
    "ffn_state": "ffn_shift_states",
}


def rwkv7_state_shapes(config: PretrainedConfig) -> StateShapes:
    if getattr(config, "attn", None):
        raise ValueError(
            "RWKV-7 with attention layers (config.attn) is not supported by hf_longssm yet: use a config without them."
        )
    value_dims = config.value_dim if isinstance(config.value_dim, list) else [config.value_dim]
    if set(value_dims) != {config.hidden_size}:
        # fla's kernels (gate_output_correction) assume head_v_dim == head_dim, and fla cannot initialise it either
        raise ValueError(
            f"RWKV-7 with value_dim {value_dims} (not hidden_size={config.hidden_size}) is not supported by "
            "hf_longssm (nor computed consistently by fla's kernels): use value_dim = hidden_size, as released."
        )
    heads = config.num_heads
    return (config.hidden_size,), (heads, config.hidden_size // heads, value_dims[0] // heads), (config.hidden_size,)


ARCHITECTURE = Architecture(
    model_types=("rwkv7",),
    display_name="RWKV-7",
    lora_target_modules=("r_proj", "k_proj", "v_proj", "o_proj", "key", "value"),
    state_shapes=rwkv7_state_shapes,
    stateful_mixers=fla_mixers("RWKV7_CLASSES"),
    state_kinds=RWKV7_STATES,
    to_cache=fla_to_cache(FLA_CACHE_ENTRIES),
    generate_from_cache=False,  # fla's generate needs its own cache bookkeeping: decode through the state
    register_model_code=import_fla,
    prepare=prepare_fla_model,
    model_computes_loss=False,  # fla's loss shifts labels itself (and is Triton-only when fused)
)
