"""The supported model families, collected from their files, and how to find the model inside its wrappers."""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from collections.abc import Iterator

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from . import (
    bamba,
    falcon_h1,
    falcon_mamba,
    fla_gated_deltanet,
    gla,
    granitemoehybrid,
    jamba,
    lfm2,
    mamba,
    mamba2,
    nemotron_h,
    olmo_hybrid,
    qwen3_5,
    qwen3_5_moe,
    qwen3_next,
    rwkv6,
    rwkv7,
    xlstm,
    zamba2,
)
from .base import CACHE_ARGUMENTS, LAYER_ATTENTION, LAYER_BOTH, LAYER_SSM, Architecture, StateKind, StateShapes


FAMILIES: tuple[Architecture, ...] = (
    mamba.ARCHITECTURE,
    falcon_mamba.ARCHITECTURE,
    mamba2.ARCHITECTURE,
    granitemoehybrid.ARCHITECTURE,
    bamba.ARCHITECTURE,
    nemotron_h.ARCHITECTURE,
    jamba.ARCHITECTURE,
    falcon_h1.ARCHITECTURE,
    zamba2.ARCHITECTURE,
    qwen3_next.ARCHITECTURE,
    qwen3_5.ARCHITECTURE,
    qwen3_5_moe.ARCHITECTURE,
    olmo_hybrid.ARCHITECTURE,
    lfm2.ARCHITECTURE,
    xlstm.ARCHITECTURE,
    gla.ARCHITECTURE,
    rwkv6.ARCHITECTURE,
    rwkv7.ARCHITECTURE,
    fla_gated_deltanet.ARCHITECTURE,
)

SUPPORTED_ARCHITECTURES: dict[str, Architecture] = {
    model_type: architecture for architecture in FAMILIES for model_type in architecture.model_types
}
_STATEFUL_MIXERS: dict[type, type] = {  # the families whose model code transformers defines
    mixer: stateful
    for architecture in FAMILIES
    if isinstance(architecture.stateful_mixers, dict)
    for mixer, stateful in architecture.stateful_mixers.items()
}


def stateful_mixer_classes(architecture: Architecture) -> dict[type, type]:
    """`{model class: hf_longssm's subclass}` for one family (importing its model code if it lives elsewhere)."""
    mixers = architecture.stateful_mixers
    return mixers if isinstance(mixers, dict) else mixers()


def unwrap_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside DDP / FSDP / Accelerate (`.module`), `torch.compile` (`._orig_mod`) and PEFT
    (`.get_base_model()`) wrappers."""
    while True:
        if isinstance(model, PreTrainedModel):
            return model
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP, FSDP, accelerate wrappers
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            raise TypeError(f"Expected a transformers model (possibly wrapped), got {type(model).__name__}.")


def get_architecture(model_or_config: torch.nn.Module | PretrainedConfig | str) -> Architecture:
    """The `Architecture` of a model, a config or a `model_type`, or a clear error naming the supported types."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = model_or_config
        if not isinstance(config, PretrainedConfig):
            config = unwrap_model(model_or_config).config
        model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"hf_longssm does not support model_type={model_type!r}. Supported model types: "
            f"{sorted(SUPPORTED_ARCHITECTURES)} (Mamba, FalconMamba and Mamba-2 checkpoints, e.g. "
            "'state-spaces/mamba-130m-hf' or 'state-spaces/mamba2-130m')."
        )
    return SUPPORTED_ARCHITECTURES[model_type]


def register_model_code(model_type: str | None) -> None:
    """Make transformers' Auto classes know `model_type` when its family's models live in another package (fla):
    import it, or say what to install. Nothing for the families transformers defines (or an unknown type)."""
    architecture = SUPPORTED_ARCHITECTURES.get(model_type)
    if architecture is not None and architecture.register_model_code is not None:
        architecture.register_model_code()


def layer_kinds(config: PretrainedConfig) -> list[str]:
    """Per layer, what it holds: `"ssm"` (conv window and SSM state), `"attention"` (keys, values), both or none."""
    architecture = get_architecture(config)
    if architecture.layer_kinds is None:
        return [LAYER_SSM] * config.num_hidden_layers
    return architecture.layer_kinds(config)


def ssm_layers(config: PretrainedConfig) -> list[int]:
    """The `layer_idx` of every layer with an SSM state, in order (all layers of a pure family)."""
    return [i for i, kind in enumerate(layer_kinds(config)) if kind in (LAYER_SSM, LAYER_BOTH)]


def attention_layers(config: PretrainedConfig) -> list[int]:
    """The `layer_idx` of every attention layer of a hybrid (none in a pure family)."""
    return [i for i, kind in enumerate(layer_kinds(config)) if kind in (LAYER_ATTENTION, LAYER_BOTH)]


def kv_shape(config: PretrainedConfig) -> tuple[int, int]:
    """`(num_key_value_heads, head_dim)` of a hybrid's attention layers."""
    return get_architecture(config).kv_shape(config)


def state_kinds(config: PretrainedConfig) -> tuple[StateKind, ...]:
    """What each stateful layer carries, in order (Mamba: the conv window, then the SSM state)."""
    return get_architecture(config).state_kinds


def window_state_names() -> set[str]:
    """The names of the state kinds that are windows of recent inputs, in any family."""
    return {kind.name for architecture in FAMILIES for kind in architecture.state_kinds if kind.window}


def state_shapes(config: PretrainedConfig) -> list[StateShapes]:
    """Per stateful layer (`ssm_layers`), one shape per state kind (`state_kinds`), without the batch dimension."""
    return [get_architecture(config).state_shapes(config)] * len(ssm_layers(config))


def prepare_model(model: torch.nn.Module) -> PreTrainedModel:
    """Swap every mixer's class for its stateful subclass (once; idempotent) and return the unwrapped model.

    The subclasses behave exactly like transformers' mixers unless their cache argument is hf_longssm's
    `SegmentStates`, so `generate()`, saving and loading are unchanged. A mixer behind an accelerate hook (a model
    loaded with `device_map=`) gets the stateful forward behind its hook too.
    """
    base = unwrap_model(model)
    architecture = get_architecture(base)
    # A config hf_longssm cannot carry is refused here, before any call (fla's GLA with short convs: its plain call
    # on the torch path would otherwise run without them)
    architecture.state_shapes(base.config)
    mixers = {**_STATEFUL_MIXERS, **stateful_mixer_classes(architecture)}
    for module in base.modules():
        stateful = mixers.get(type(module))
        if stateful is not None:
            original = type(module)
            module.__class__ = stateful
            _rebind_accelerate_hook(module, original)
    if architecture.prepare is not None:
        architecture.prepare(base)
    return base


def _rebind_accelerate_hook(module: torch.nn.Module, original: type) -> None:
    """Make an accelerate hook on a mixer whose class was just swapped call the stateful forward.

    A model loaded with `device_map=` (or passed to `accelerate.dispatch_model`) has hooks that replace `forward` on
    the instance: the hook moves the inputs to the layer's execution device, on-loads offloaded weights, then calls
    `module._old_forward`, the forward *bound when the hook was attached* (transformers' own). Swapping the class
    does not change that bound method, so the stateful forward would never run and transformers' forward would get
    a `SegmentStates` as its cache. Only transformers' own forward bound to this module is replaced; a hook attached
    after the swap already holds the stateful forward, and `remove_hook_from_module` restores the rebound one.
    """
    old_forward = vars(module).get("_old_forward")
    if getattr(old_forward, "__self__", None) is module and getattr(old_forward, "__func__", None) is original.forward:
        module._old_forward = types.MethodType(type(module).forward, module)


def input_device(model: torch.nn.Module) -> torch.device:
    """The device `model` takes its inputs on: the input embeddings' execution device.

    For a model dispatched by accelerate (`from_pretrained(device_map=...)`) the embedding's weight may be on "meta"
    (offloaded to the CPU or disk) or on another device than the first parameter, so the hook's execution device is
    read; otherwise the embedding weight's device.
    """
    embeddings = unwrap_model(model).get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    for part in getattr(hook, "hooks", (hook,)):  # a `SequentialHook` chains several
        execution_device = getattr(part, "execution_device", None)
        if execution_device is not None:
            # accelerate stores a GPU index as an int: torch.device(0) is the first CUDA device.
            return torch.device(execution_device)
    return embeddings.weight.device


def cache_argument(model: torch.nn.Module) -> str:
    """The name under which `model`'s forward (and `generate`) takes its recurrent cache: `cache` from transformers
    5.24 on, `cache_params` before. Read from the signature, so hf_longssm's own calls never pass the deprecated name.
    """
    return _cache_argument(type(unwrap_model(model)))


@functools.cache
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters  # follows `functools.wraps` of the decorators
    for name in CACHE_ARGUMENTS:
        if name in parameters:
            return name
    raise TypeError(
        f"{model_class.__name__}.forward takes none of {CACHE_ARGUMENTS}: this transformers version is not supported "
        "by hf_longssm (see hf_longssm.modeling.compat for the tested range)."
    )


def reentrant_checkpointing(model: torch.nn.Module) -> bool:
    """Whether the model's checkpointed layers use reentrant activation checkpointing (`use_reentrant=True`)."""
    layers = [m for m in unwrap_model(model).modules() if isinstance(m, GradientCheckpointingLayer)]
    return any(getattr(getattr(layer, "_gradient_checkpointing_func", None), "keywords", {}).get("use_reentrant")
               for layer in layers)  # fmt: skip


@contextlib.contextmanager
def cache_kept_under_checkpointing(model: torch.nn.Module) -> Iterator[None]:
    """Let the model's checkpointed layers keep their cache argument for the calls inside the block.

    In training with activation checkpointing, transformers' `GradientCheckpointingLayer` replaces a layer's `cache`
    with `None` (from 5.24, when the argument took that name) unless the layer sets `_can_checkpoint_with_cache`,
    because a cache written in place would be updated a second time by the backward replay. `SegmentStates` is the
    case that flag is for: the replay reads the same initial states and writes equal final states to the same slots.
    Only `forward_with_state`'s own call sets it, per instance, so transformers' caches keep their rule.
    """
    layers = [m for m in unwrap_model(model).modules() if isinstance(m, GradientCheckpointingLayer)]
    ids = {id(layer) for layer in layers}
    nested = any(id(inner) in ids for layer in layers for inner in layer.modules() if inner is not layer)
    reentrant = reentrant_checkpointing(model)
    if nested and reentrant:
        # A checkpointed layer inside another (Zamba2's hybrid layers) is called again by the reentrant backward,
        # after this block has ended: transformers would drop its cache then, and the replay run from a zero state.
        raise ValueError(
            f"{type(unwrap_model(model)).__name__} nests checkpointed layers, and reentrant checkpointing replays "
            "them without the carried state. Use activation_checkpointing_kwargs={'use_reentrant': False} (the "
            "default), or turn activation checkpointing off."
        )
    before = [vars(layer).get("_can_checkpoint_with_cache") for layer in layers]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer, value in zip(layers, before):
            if value is None:
                del layer._can_checkpoint_with_cache
            else:
                layer._can_checkpoint_with_cache = value
