"""A model's training-free length extension: installed on its Mamba layers, saved beside its weights, loaded back.

A `LengthExtension` is one `DeltaTransform` per SSM layer (`modeling/delta.py`): MambaExtend's Δ scales or
LongMamba's Δ thresholds, with the settings they were calibrated with. The calibration itself is
`hf_longssm.extend`; this module only installs, describes, saves and loads the result.

On disk it is `length_extension.safetensors` in the model's folder (one tensor per SSM layer, the method and its
settings in the file's metadata), and `config.json` gets a `longssm_extension` entry naming it, so
`hl.load_model(folder)` (and every command built on it) restores the extension, while transformers'
`from_pretrained` loads the unchanged base weights. `install_extension` makes the model's `save_pretrained` (also
used by `push_to_hub` and the Trainer) write the file with the weights.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

from .modeling import get_architecture, prepare_model, ssm_layers, unwrap_model
from .modeling.base import StatefulMixerMixin
from .modeling.delta import FilterDelta, ScaleDelta, set_delta_transform


EXTENSION_FILE = "length_extension.safetensors"
CONFIG_KEY = "longssm_extension"
# How each method's values act on Δ (`modeling/delta.py`).
TRANSFORMS = {"mamba_extend": ScaleDelta, "delta_scale": ScaleDelta, "long_mamba": FilterDelta}
_ATTRIBUTE = "_hf_longssm_length_extension"


@dataclass
class LengthExtension:
    """A calibrated training-free length extension.

    Args:
        method (`str`): `"mamba_extend"` (one Δ scale per layer), `"delta_scale"` (a uniform scale, the sanity
            baseline) or `"long_mamba"` (per-channel Δ thresholds).
        values (`list[torch.Tensor]`): per SSM layer in `layer_idx` order: the scale (a scalar) or the thresholds
            (`(channels,)`: Mamba-1 channels or Mamba-2 heads; 0 = never filtered).
        settings (`dict`): what it was calibrated with and for (target length, samples, iterations, time...), JSON.
    """

    method: str
    values: list[torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in TRANSFORMS:
            raise ValueError(f"Unknown length extension {self.method!r}: one of {sorted(TRANSFORMS)}.")

    def transforms(self):
        return [TRANSFORMS[self.method](value.detach().float().cpu()) for value in self.values]


def stateful_mixers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's Mamba mixers in `layer_idx` order (one per SSM layer), after `prepare_model`."""
    base = prepare_model(model)
    mixers = sorted(
        (m for m in base.modules() if isinstance(m, StatefulMixerMixin)), key=lambda m: getattr(m, "layer_idx", 0)
    )
    if not all(m.takes_delta_transform for m in mixers):
        raise ValueError(
            f"{get_architecture(base).display_name} has no Mamba layers: the training-free length extensions "
            "(MambaExtend, LongMamba, delta_scale) scale a Mamba layer's Δ. Post-train it with StatePassingTrainer "
            "instead."
        )
    expected = len(ssm_layers(base.config))
    if len(mixers) != expected:
        raise RuntimeError(f"Found {len(mixers)} Mamba mixers but the config has {expected} SSM layers.")
    return mixers


def install_extension(model: torch.nn.Module, extension: LengthExtension) -> torch.nn.Module:
    """Apply `extension` to every Mamba layer of `model` (replacing any installed one); returns `model`.

    The model's `save_pretrained` then writes `length_extension.safetensors` beside the weights and
    `config.longssm_extension` names it.
    """
    mixers = stateful_mixers(model)
    if len(extension.values) != len(mixers):
        raise ValueError(
            f"The {extension.method} extension has values for {len(extension.values)} layers; this model has "
            f"{len(mixers)} Mamba layers: it was calibrated for another model."
        )
    for layer, (mixer, value) in enumerate(zip(mixers, extension.values)):
        channels = mixer.num_heads if hasattr(mixer, "num_heads") else mixer.intermediate_size
        if value.numel() not in ((1, channels) if TRANSFORMS[extension.method] is ScaleDelta else (channels,)):
            raise ValueError(
                f"The {extension.method} extension has {value.numel()} values for Mamba layer {layer}, which has "
                f"{channels} channels: it was calibrated for another model."
            )
    for mixer, transform in zip(mixers, extension.transforms()):
        set_delta_transform(mixer, transform)
    base = unwrap_model(model)
    object.__setattr__(base, _ATTRIBUTE, extension)
    setattr(base.config, CONFIG_KEY, {"method": extension.method, "file": EXTENSION_FILE, **extension.settings})
    if "save_pretrained" not in vars(base):
        base.save_pretrained = _SavePretrainedWithExtension(base)
    return model


def remove_extension(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `install_extension`: the plain model again (its weights were never changed); returns `model`."""
    for mixer in stateful_mixers(model):
        set_delta_transform(mixer, None)
    base = unwrap_model(model)
    vars(base).pop(_ATTRIBUTE, None)
    vars(base).pop("save_pretrained", None)
    if hasattr(base.config, CONFIG_KEY):
        delattr(base.config, CONFIG_KEY)
    return model


@contextlib.contextmanager
def calibrating(model: torch.nn.Module) -> Iterator[list[torch.nn.Module]]:
    """The model's Mamba mixers with any extension removed, for a calibration to try transforms on. If the
    calibration fails or is interrupted, every trial transform is cleared and the previous extension put back, so
    the model never keeps a half-calibrated state; on success the caller installs the result."""
    previous = get_extension(model)
    remove_extension(model)
    mixers = stateful_mixers(model)
    try:
        yield mixers
    except BaseException:
        for mixer in mixers:
            set_delta_transform(mixer, None)
        if previous is not None:
            install_extension(model, previous)
        raise


def get_extension(model: torch.nn.Module) -> LengthExtension | None:
    """The extension installed on `model`, or `None`."""
    return vars(unwrap_model(model)).get(_ATTRIBUTE)


def save_extension(model: torch.nn.Module, folder: str | os.PathLike) -> Path | None:
    """Write the installed extension to `<folder>/length_extension.safetensors` (nothing without one)."""
    extension = get_extension(model)
    if extension is None:
        return None
    path = Path(folder) / EXTENSION_FILE
    tensors = {f"layers.{i}": v.detach().float().cpu().reshape(-1).clone() for i, v in enumerate(extension.values)}
    metadata = {"method": extension.method, "settings": json.dumps(extension.settings)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # never a half-written file under the final name
    return path


def read_extension(path: str | os.PathLike) -> LengthExtension:
    """A `LengthExtension` from a `length_extension.safetensors` file (safetensors: no code runs on load)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            values = [handle.get_tensor(f"layers.{i}") for i in range(len(names)) if f"layers.{i}" in names]
        settings = json.loads(metadata.get("settings", "{}"))
    except Exception as err:  # safetensors raises its own error type for a truncated or foreign file
        raise ValueError(
            f"{path} is not a readable length extension file ({err}); write it again (`hf-longssm extend`)."
        ) from None
    if "method" not in metadata or len(values) != len(names):
        raise ValueError(f"{path} is not a length extension file (no 'method' in its metadata, or other tensors).")
    method = metadata["method"]
    # A scale is stored as a 1-element vector; the transform takes it as a scalar.
    values = [v.reshape(()) if TRANSFORMS.get(method) is ScaleDelta and v.numel() == 1 else v for v in values]
    return LengthExtension(method, values, settings)


class _SavePretrainedWithExtension:
    """An extended model's `save_pretrained`: transformers' own, then the extension's file (on the main process, as
    transformers writes its files). A callable object rather than a bound function, so the model still pickles and
    deep-copies."""

    def __init__(self, model: PreTrainedModel):
        self.model = model

    def __call__(self, save_directory, *args, **kwargs):
        type(self.model).save_pretrained(self.model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            save_extension(self.model, save_directory)
