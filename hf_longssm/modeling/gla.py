"""Gated Linear Attention (`model_type="gla"`, flash-linear-attention's `GLAForCausalLM`; checkpoints under
`fla-hub/`): every layer a gated linear attention whose state is one `(v, k)` matrix per head, `recurrent_states
(num_heads, head_v_dim, head_k_dim)`, the layout fla's layer keeps in its cache (`state_v_first=True`).

The model code is fla's (`pip install "hf-longssm[fla]"`; fla imports Triton, so it is imported only when a GLA
model is loaded or prepared). hf_longssm swaps in its own layer and module classes (`fla_layers.py`, with the
segment forward `gla_forward_with_state`): fla's `chunk_gla` kernel on CUDA, the exact chunked torch path
(`ops/gla.py`) elsewhere, where fla's norms and MLP run in torch too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PretrainedConfig

from .base import Architecture, StateKind, StateShapes


GLA_STATES = (StateKind("recurrent_states"),)


def import_fla() -> None:
    """Import flash-linear-attention, which registers its model types (`gla`, ...) with transformers' Auto
    classes, or say how to install it."""
    try:
        import fla  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"This model's code is flash-linear-attention's, which did not import ({err}): install it with "
            '`pip install "hf-longssm[fla]"` (it brings Triton; on a CPU the layers run hf_longssm\'s torch path).'
        ) from err


def gla_state_shapes(config: PretrainedConfig) -> StateShapes:
    unsupported = {
        "use_short_conv": getattr(config, "use_short_conv", False),
        "feature_map": getattr(config, "feature_map", None),
        "attn": getattr(config, "attn", None),
        "attnres_block_size": getattr(config, "attnres_block_size", None),
    }
    unsupported = {k: v for k, v in unsupported.items() if v}
    if unsupported:
        raise ValueError(
            f"GLA with {unsupported} is not supported by hf_longssm yet (its short convs, feature maps, attention "
            "layers or attention residuals carry no state here); use a GLA config without them (fla-hub's GLA "
            "checkpoints have none)."
        )
    heads = config.num_heads
    # fla's layer rounds (`round(hidden_size * expand_k)`)
    key_dim, value_dim = round(config.hidden_size * config.expand_k), round(config.hidden_size * config.expand_v)
    return ((heads, value_dim // heads, key_dim // heads),)


def prepare_fla_model(model) -> None:
    """fla's models compute their own loss with a Triton-only fused cross-entropy: give them one that runs on the
    torch path too (`model(input_ids, labels=...)` on a CPU)."""
    from . import fla_layers  # imports fla (and Triton): only for an fla model

    fla_layers.use_dispatching_criterion(model)


def fla_mixers(name: str) -> Callable[[], dict[type, type]]:
    """An fla family's `stateful_mixers`: the mapping `fla_layers.<name>`, imported when a model is prepared."""

    def mixers() -> dict[type, type]:
        from . import fla_layers

        return getattr(fla_layers, name)

    return mixers


def fla_to_cache(entries: dict[str, str | tuple[str, ...]]) -> Callable:
    """An fla family's `to_cache`: fla's own cache with the state kind (or kinds) each entry holds."""

    def to_cache(config: PretrainedConfig, states: dict[str, list[torch.Tensor]], position: int):
        from . import fla_layers

        return fla_layers.fla_cache(states, position, entries)

    return to_cache


ARCHITECTURE = Architecture(
    model_types=("gla",),
    display_name="GLA",
    lora_target_modules=("q_proj", "k_proj", "v_proj", "g_proj", "o_proj"),
    state_shapes=gla_state_shapes,
    stateful_mixers=fla_mixers("GLA_CLASSES"),
    state_kinds=GLA_STATES,
    to_cache=fla_to_cache({"recurrent_state": "recurrent_states"}),
    generate_from_cache=False,  # fla's generate needs its own cache bookkeeping: decode through the state
    register_model_code=import_fla,
    prepare=prepare_fla_model,
    model_computes_loss=False,
)
