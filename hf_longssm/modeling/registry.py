"""The supported architectures, keyed by `model_type`, and how to find the model inside its wrappers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class Architecture:
    """What hf_longssm needs to know about one model family.

    Args:
        model_type (`str`): `config.model_type`.
        lora_target_modules (`tuple[str, ...]`): default LoRA targets (peft refuses `out_proj` and `conv1d` on these
            models and has no defaults of its own).
    """

    model_type: str
    lora_target_modules: tuple[str, ...]


SUPPORTED_ARCHITECTURES: dict[str, Architecture] = {
    "mamba": Architecture("mamba", ("in_proj", "x_proj", "dt_proj")),
    "falcon_mamba": Architecture("falcon_mamba", ("in_proj", "x_proj", "dt_proj")),
    "mamba2": Architecture("mamba2", ("in_proj",)),
}


def _stateful_classes() -> dict[type, type]:
    # Imported here: the stateful mixers import the state module, which imports this one.
    from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaMixer
    from transformers.models.mamba.modeling_mamba import MambaMixer
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    from .mamba import StatefulFalconMambaMixer, StatefulMambaMixer
    from .mamba2 import StatefulMamba2Mixer

    return {
        MambaMixer: StatefulMambaMixer,
        FalconMambaMixer: StatefulFalconMambaMixer,
        Mamba2Mixer: StatefulMamba2Mixer,
    }


def unwrap_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside DDP / FSDP / Accelerate (`.module`) and PEFT (`.get_base_model()`) wrappers."""
    while True:
        if isinstance(model, PreTrainedModel):
            return model
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP, FSDP, accelerate wrappers
            model = model.module
        else:
            raise TypeError(f"Expected a transformers model (possibly wrapped), got {type(model).__name__}.")


def get_architecture(model_or_config) -> Architecture:
    """The `Architecture` of a model or config, or a clear error naming the supported types."""
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else unwrap_model(model_or_config).config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"hf_longssm does not support model_type={model_type!r}. Supported model types: "
            f"{sorted(SUPPORTED_ARCHITECTURES)} (Mamba, FalconMamba and Mamba-2 checkpoints, e.g. "
            "'state-spaces/mamba-130m-hf' or 'state-spaces/mamba2-130m')."
        )
    return SUPPORTED_ARCHITECTURES[model_type]


def state_shapes(config: PretrainedConfig) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per layer, the `(conv_state, recurrent_state)` shapes without the batch dimension."""
    get_architecture(config)
    if config.model_type == "mamba2":
        intermediate = int(config.expand * config.hidden_size)
        conv_dim = intermediate + 2 * config.n_groups * config.state_size
        shapes = ((conv_dim, config.conv_kernel), (config.num_heads, config.head_dim, config.state_size))
        if config.num_heads * config.head_dim != intermediate:
            raise ValueError(
                f"Mamba-2 config has num_heads * head_dim = {config.num_heads * config.head_dim} but "
                f"expand * hidden_size = {intermediate}; fix the config."
            )
    else:
        shapes = ((config.intermediate_size, config.conv_kernel), (config.intermediate_size, config.state_size))
    return [shapes] * config.num_hidden_layers


def prepare_model(model: torch.nn.Module) -> PreTrainedModel:
    """Swap every mixer's class for its stateful subclass (once; idempotent) and return the unwrapped model.

    The subclasses behave exactly like transformers' mixers unless `cache_params` is hf_longssm's `SegmentStates`,
    so `generate()`, saving and loading are unchanged.
    """
    base = unwrap_model(model)
    get_architecture(base)
    swaps = _stateful_classes()
    for module in base.modules():
        stateful = swaps.get(type(module))
        if stateful is not None:
            module.__class__ = stateful
    return base
