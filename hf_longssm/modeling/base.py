"""What every model family declares (`Architecture`) and the machinery its stateful mixer shares.

A family file (`mamba.py`, `falcon_mamba.py`, `mamba2.py`) provides one `ARCHITECTURE` with:

* `model_types`: the `config.model_type` values it serves;
* `display_name`: how cards and logs name it;
* `lora_target_modules`: default LoRA targets whose adapters train (peft has no defaults for these models);
* `state_shapes(config)`: per layer, the `(conv_state, recurrent_state)` shapes without the batch dimension, in
  transformers' own `DynamicCache` layout;
* `stateful_mixers`: `{transformers mixer class: stateful subclass}`; the subclass mixes in `StatefulMixerMixin`
  and defines `segment_forward(hidden_states, conv_state, recurrent_state) -> (output, conv_state, recurrent_state)`.

`registry.py` only collects the families: adding one means adding its file and naming it there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig


StateShapes = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class Architecture:
    """What hf_longssm needs to know about one model family (see the module docstring)."""

    model_types: tuple[str, ...]
    display_name: str
    lora_target_modules: tuple[str, ...]
    state_shapes: Callable[[PretrainedConfig], StateShapes]
    stateful_mixers: dict[type, type] = field(default_factory=dict)


class SegmentStates:
    """What the stateful mixers read and write during one segment, passed to the model as its cache argument.

    Initial states are only read; final states go to separate slots as fresh tensors (nothing is written in place,
    so a tensor autograd saved is never modified). Under gradient checkpointing the recomputation reads the same
    initial states and overwrites the slots with equal values, so it stays exact.

    Args:
        conv_states, recurrent_states (`Sequence[torch.Tensor]`): the initial state of every layer.
    """

    def __init__(self, conv_states: Sequence[torch.Tensor], recurrent_states: Sequence[torch.Tensor]):
        self.conv_states, self.recurrent_states = list(conv_states), list(recurrent_states)
        self.final_conv: list[torch.Tensor | None] = [None] * len(self.conv_states)
        self.final_recurrent: list[torch.Tensor | None] = [None] * len(self.recurrent_states)

    def run_layer(self, mixer, hidden_states: torch.Tensor) -> torch.Tensor:
        idx = mixer.layer_idx
        initial_conv, initial_recurrent = self.conv_states[idx], self.recurrent_states[idx]
        # Each layer's state lives where the layer runs: with a `device_map` spreading layers over devices,
        # accelerate's hook has moved `hidden_states` to this layer's execution device, and a state built elsewhere
        # (zeros on the input device, a state loaded on the CPU) moves there once; the final state stays there for
        # the next segment. `.to` is differentiable: gradients still reach a state that requires them.
        if initial_conv.device != hidden_states.device:
            initial_conv = initial_conv.to(hidden_states.device)
        if initial_recurrent.device != hidden_states.device:
            initial_recurrent = initial_recurrent.to(hidden_states.device)
        out, conv, ssm = mixer.segment_forward(hidden_states, initial_conv, initial_recurrent)
        # The final state keeps the initial state's dtypes: under autocast the conv window comes out in the autocast
        # dtype, and a state must stay valid for the next segment whatever precision this one ran in.
        self.final_conv[idx] = conv.to(initial_conv.dtype)
        self.final_recurrent[idx] = ssm.to(initial_recurrent.dtype)
        return out

    def final_states(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`(conv_states, recurrent_states)` after the segment, one per layer."""
        missing = [i for i, s in enumerate(self.final_recurrent) if s is None]
        if missing:
            raise RuntimeError(f"Layers {missing} did not run through hf_longssm's stateful mixer.")
        return list(self.final_conv), list(self.final_recurrent)


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

    def forward(self, hidden_states, *args, **kwargs):
        segment = segment_states_in(args, kwargs)
        if segment is not None:
            return segment.run_layer(self, hidden_states)
        return super().forward(hidden_states, *args, **kwargs)


CACHE_ARGUMENTS = ("cache", "cache_params")  # transformers >= 5.24, <= 5.23


def segment_states_in(args: tuple, kwargs: dict) -> SegmentStates | None:
    """The `SegmentStates` among a mixer call's arguments (the cache, under either name or first positional)."""
    for name in CACHE_ARGUMENTS:
        if isinstance(kwargs.get(name), SegmentStates):
            return kwargs[name]
    if args and isinstance(args[0], SegmentStates):
        return args[0]
    return None
