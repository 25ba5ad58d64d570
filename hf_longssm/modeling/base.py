"""What every model family declares (`Architecture`) and the machinery its stateful mixer shares.

A family file (`mamba.py`, `falcon_mamba.py`, `mamba2.py`, ...) provides one `ARCHITECTURE` with:

* `model_types`: the `config.model_type` values it serves;
* `display_name`: how cards and logs name it;
* `lora_target_modules`: default LoRA targets whose adapters train (peft has no defaults for these models);
* `state_kinds`: the tensors one stateful layer carries, in order (`StateKind`): Mamba's conv window and SSM state
  by default; a short-conv layer (LFM2) its window alone;
* `state_shapes(config)`: one shape per state kind, without the batch dimension, in transformers' own cache layout;
* `stateful_mixers`: `{transformers mixer class: stateful subclass}`; the subclass mixes in `StatefulMixerMixin`
  and defines `segment_forward(hidden_states, *states) -> (output, *states)`, one state per kind, in order. A family
  whose model code lives in another package (flash-linear-attention, which imports Triton) gives a function that
  imports it and returns the mapping, called when a model of the family is prepared.

`registry.py` only collects the families: adding one means adding its file and naming it there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PretrainedConfig

from .delta import refuse_plain_forward


StateShapes = tuple[tuple[int, ...], ...]  # one shape per state kind


@dataclass(frozen=True)
class StateKind:
    """One tensor a stateful layer carries between segments.

    Args:
        name (`str`): how `CarriedState` and its files name the per-layer list (`"conv_states"`, ...).
        window (`bool`): a window of the layer's recent inputs (a conv window, a token shift). It starts at zero
            under every state init: the noise inits perturb only the states that accumulate over the sequence.
    """

    name: str
    window: bool = False


# Mamba's (and every layer with a short conv before a recurrence): the conv window, then the recurrent state.
CONV_AND_RECURRENT = (StateKind("conv_states", window=True), StateKind("recurrent_states"))


@dataclass(frozen=True)
class Architecture:
    """What hf_longssm needs to know about one model family (see the module docstring)."""

    model_types: tuple[str, ...]
    display_name: str
    lora_target_modules: tuple[str, ...]
    state_shapes: Callable[[PretrainedConfig], StateShapes]
    stateful_mixers: dict[type, type] | Callable[[], dict[type, type]] = field(default_factory=dict)
    state_kinds: tuple[StateKind, ...] = CONV_AND_RECURRENT
    # The model's own cache filled with carried states (`{kind name: per-layer tensors}`, the tokens read), for a
    # family whose cache is not transformers' `DynamicCache` (xLSTM, fla); `CarriedState.to_cache` fills a
    # `DynamicCache` otherwise.
    to_cache: Callable[[PretrainedConfig, dict[str, list[torch.Tensor]], int], Any] | None = None
    # Whether transformers' `generate()` continues from that cache (xLSTM's 5.25 generate does not take one: decode
    # one token at a time, as `evaluation.passkey.greedy_from_state` does).
    generate_from_cache: bool = True
    # Hybrids: what each layer holds, `LAYER_SSM` (conv window + SSM state), `LAYER_ATTENTION` (keys and values),
    # `LAYER_BOTH` (both side by side, Falcon-H1) or `LAYER_NONE` (an MLP, MoE...). Pure families: all `LAYER_SSM`.
    layer_kinds: Callable[[PretrainedConfig], list[str]] | None = None
    # Attention layers' `(num_key_value_heads, head_dim)` (hybrids only).
    kv_shape: Callable[[PretrainedConfig], tuple[int, int]] | None = None
    # Imports the package that defines the family's models and registers them with transformers' Auto classes
    # (fla), for a family transformers does not define; called before a config or model of it is loaded.
    register_model_code: Callable[[], None] | None = None
    # Whether the model's forward computes transformers' causal LM loss from `labels` / `shift_labels`. fla's models
    # shift `labels` themselves, take no `shift_labels` and use a Triton-only fused loss: `forward_with_state`
    # computes the loss from their logits instead.
    model_computes_loss: bool = True
    # What else `prepare_model` does to a model of the family, once its classes are swapped (fla: a loss that runs
    # where fla's Triton-only fused cross-entropy does not).
    prepare: Callable[[Any], None] | None = None


LAYER_SSM, LAYER_ATTENTION, LAYER_BOTH, LAYER_NONE = "ssm", "attention", "ssm+attention", "none"


class SegmentStates:
    """What the stateful layers read and write during one segment, passed to the model as its cache argument.

    Initial states are only read; final states go to separate slots as fresh tensors (nothing is written in place,
    so a tensor autograd saved is never modified). Under gradient checkpointing the recomputation reads the same
    initial states and overwrites the slots with equal values, so it stays exact.

    Args:
        states (`Sequence[Sequence[torch.Tensor]]`): per state kind (`Architecture.state_kinds`, in order), the
            initial state of every stateful layer.
        ssm_layers (`Sequence[int]`, *optional*): the `layer_idx` of each stateful layer (default: all, in order).
        keys, values (`Sequence[torch.Tensor]`, *optional*): the carried keys and values of every attention layer,
            `(batch, num_key_value_heads, carried_length, head_dim)`, already rotated at their positions.
        attention_layers (`Sequence[int]`, *optional*): the `layer_idx` of each attention layer.
        attention_window (`int`, *optional*): keys and values kept after the segment: the last `attention_window`
            (0: none); `None` keeps them all.
    """

    def __init__(
        self,
        states: Sequence[Sequence[torch.Tensor]],
        ssm_layers: Sequence[int] | None = None,
        keys: Sequence[torch.Tensor] = (),
        values: Sequence[torch.Tensor] = (),
        attention_layers: Sequence[int] = (),
        attention_window: int | None = None,
    ):
        self.states = [list(kind) for kind in states]
        num_layers = len(self.states[0])
        ssm_layers = range(num_layers) if ssm_layers is None else ssm_layers
        self.ssm_slots = {layer_idx: slot for slot, layer_idx in enumerate(ssm_layers)}
        self.final: list[list[torch.Tensor | None]] = [[None] * num_layers for _ in self.states]
        self.keys, self.values = list(keys), list(values)
        self.attention_slots = {layer_idx: slot for slot, layer_idx in enumerate(attention_layers)}
        self.attention_window = attention_window
        self.final_keys: list[torch.Tensor | None] = [None] * len(self.keys)
        self.final_values: list[torch.Tensor | None] = [None] * len(self.values)

    def run_layer(
        self,
        mixer,
        hidden_states: torch.Tensor,
        layer_idx: int | None = None,
        kinds: Sequence[int] | None = None,
        **kwargs,
    ):
        """Run `mixer.segment_forward(hidden_states, *initial states, **kwargs)` and record its final states.

        `kinds` (indices into the family's state kinds; default: all) are the states this module carries: RWKV-7's
        attention carries its token shift and matrix state, its feed-forward block its own token shift. The
        segment forward returns its output (any object) followed by one final state per kind, in order.
        """
        idx = self.ssm_slots[mixer.layer_idx if layer_idx is None else layer_idx]
        kinds = range(len(self.states)) if kinds is None else kinds
        if self.final[kinds[0]][idx] is not None and not torch.is_grad_enabled():
            # A second call in one segment outside a checkpointed replay: xLSTM's forward reads inputs longer than
            # `max_inference_chunksize` chunk by chunk in eval mode, each chunk from the cache it just wrote.
            raise ValueError(
                "A layer ran twice in one segment: the model reads long inputs in chunks (xLSTM in eval mode, above "
                "config.max_inference_chunksize tokens). Use segments no longer than that."
            )
        # Each layer's state lives where the layer runs: with a `device_map` spreading layers over devices,
        # accelerate's hook has moved `hidden_states` to this layer's execution device, and a state built elsewhere
        # (zeros on the input device, a state loaded on the CPU) moves there once; the final state stays there for
        # the next segment. `.to` is differentiable: gradients still reach a state that requires them.
        initial = [self.states[kind][idx] for kind in kinds]
        initial = [t.to(hidden_states.device) if t.device != hidden_states.device else t for t in initial]
        out, *final = mixer.segment_forward(hidden_states, *initial, **kwargs)
        # The final state keeps the initial state's dtypes: under autocast a conv window comes out in the autocast
        # dtype, and a state must stay valid for the next segment whatever precision this one ran in.
        for kind, before, after in zip(kinds, initial, final):
            self.final[kind][idx] = after.to(before.dtype)
        return out

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """The attention layers' cache call: the carried keys and values followed by the segment's (new tensors),
        the window of them kept for the next segment. Its other arguments (`cache_kwargs`) are not needed here."""
        idx = self.attention_slots[layer_idx]
        keys = torch.cat([self.keys[idx].to(key_states.device, key_states.dtype), key_states], dim=-2)
        values = torch.cat([self.values[idx].to(value_states.device, value_states.dtype), value_states], dim=-2)
        kept = keys.shape[-2] if self.attention_window is None else min(self.attention_window, keys.shape[-2])
        # The carried dtype is kept (as for SSM states): under autocast the projections come out in bfloat16.
        self.final_keys[idx] = keys[..., keys.shape[-2] - kept :, :].to(self.keys[idx].dtype)
        self.final_values[idx] = values[..., values.shape[-2] - kept :, :].to(self.values[idx].dtype)
        return keys, values

    @property
    def rnn_state(self) -> dict[int, LayerSlot]:
        """xLSTM's cache API: per layer, what its model forward hands the layer as its state (`xlstm.py`)."""
        return {layer_idx: LayerSlot(self, layer_idx, len(self.states)) for layer_idx in self.ssm_slots}

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Carried keys before the segment (what a hybrid's forward asks its cache for positions)."""
        return self.keys[0].shape[-2] if self.keys else 0

    def final_states(self) -> list[list[torch.Tensor]]:
        """Per state kind, the state of every stateful layer after the segment."""
        missing = sorted({i for kind in self.final for i, s in enumerate(kind) if s is None})
        missing += [i for i, s in enumerate(self.final_keys) if s is None]
        if missing:
            raise RuntimeError(f"Layers {missing} did not run through hf_longssm's stateful layers.")
        return [list(kind) for kind in self.final]

    def final_attention(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`(keys, values)` kept after the segment, one per attention layer."""
        return list(self.final_keys), list(self.final_values)


class _Discard:
    """Takes an in-place copy and keeps nothing (the final states are recorded by `SegmentStates.run_layer`)."""

    def copy_(self, other, *args, **kwargs):
        return self


class LayerSlot(tuple):
    """One layer's state as a model that passes states per layer (xLSTM) sees it: as many entries as the layer has
    state kinds, each taking the model's in-place `copy_` and keeping nothing; it names its segment and layer."""

    def __new__(cls, segment: SegmentStates, layer_idx: int, num_kinds: int):
        slot = super().__new__(cls, [_Discard()] * num_kinds)
        slot.segment, slot.layer_idx = segment, layer_idx
        return slot


class StatefulMixerMixin:
    """Serve `SegmentStates` passed as the cache; otherwise behave exactly as transformers' mixer, so `generate()`,
    saving and loading are unchanged.

    transformers names the mixer's cache argument `cache_params` up to 5.23 and `cache` from 5.24 on; the blocks pass
    it by keyword. The override reads either name and hands every other call to transformers' forward with its
    arguments untouched, so it never triggers the rename's deprecation warning and follows whatever the installed
    version's mixer does.

    Subclasses set `segment_forward`, wrapped with transformers' `force_accelerate_hooks` for the child modules whose
    weights it reads directly (`conv1d.weight`, Mamba-1's `dt_proj.weight`): with a `device_map`, accelerate on-loads
    a module's offloaded weights only around its own `forward`, which the segment forward never calls. The mixer's
    own parameters (`A_log`, `D`, ...) are on-loaded by the mixer's hook (see `registry._rebind_accelerate_hook`), and
    transformers' forward, used for every other call, carries the same decorator itself.
    """

    # Whether the segment forward applies a length extension's Δ transform (`delta.py`): the Mamba mixers' does.
    takes_delta_transform = True

    def forward(self, hidden_states, *args, **kwargs):
        segment = segment_states_in(args, kwargs)
        if segment is not None:
            return segment.run_layer(self, hidden_states)
        refuse_plain_forward(self)  # a length extension lives in the segment forward only
        return super().forward(hidden_states, *args, **kwargs)


# transformers >= 5.24, <= 5.23; and the hybrids' models up to 5.23 (their mixers take `cache_params`)
CACHE_ARGUMENTS = ("cache", "cache_params", "past_key_values")


def segment_states_in(args: tuple, kwargs: dict) -> SegmentStates | None:
    """The `SegmentStates` among a mixer call's arguments (the cache, under either name or first positional)."""
    for name in CACHE_ARGUMENTS:
        if isinstance(kwargs.get(name), SegmentStates):
            return kwargs[name]
    if args and isinstance(args[0], SegmentStates):
        return args[0]
    return None
