"""The hook through which training-free length extensions change a Mamba layer's step size Δ.

Every stateful mixer (Mamba-1, FalconMamba, Mamba-2 and the hybrids' Mamba layers) discretizes its step as
`Δ = softplus(dt + dt_bias)` (Mamba-2 then clamps it to `time_step_limit`) and hands Δ to the scan, where it sets
both the decay `exp(Δ A)` and the input's weight `Δ B x`. A mixer that holds a `DeltaTransform` (`set_delta_transform`,
used by `hf_longssm.extend`) discretizes Δ itself, passes it through the transform, and gives the scan the result with
the bias and softplus switched off; a mixer without one runs exactly the code it ran before.

The transforms are plain objects, not submodules: their values never enter the model's `state_dict`, so
`save_pretrained` writes transformers' own weights only and the calibrated values travel in a file of their own
(`hf_longssm.extend.save_extension`).

A transform is applied in hf_longssm's segment forward only (`forward_with_state` and everything built on it).
transformers' own forward does not know it, so a mixer with a transform refuses to run it (see `refuse_plain_forward`)
rather than silently returning the un-extended model's output.
"""

from __future__ import annotations

import torch


class DeltaTransform:
    """A map `Δ -> Δ'` applied per layer after discretization.

    Subclasses implement `transform(dt, channel_dim)`, where `dt` is the float32 step in the mixer's layout (Mamba-1
    `(batch, channels, length)`, `channel_dim=1`; Mamba-2 `(batch, length, heads)`, `channel_dim=-1`).
    """

    method: str = ""

    def transform(self, dt: torch.Tensor, channel_dim: int) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, dt: torch.Tensor, channel_dim: int) -> torch.Tensor:
        return self.transform(dt, channel_dim)


def _per_channel(values: torch.Tensor, dt: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """`values (channels,)` shaped to broadcast along `channel_dim` of `dt`, on its device."""
    shape = [1] * dt.dim()
    shape[channel_dim] = -1
    return values.to(dt.device).view(shape)


class ScaleDelta(DeltaTransform):
    """`Δ' = scale * Δ`: MambaExtend's per-layer scaling factor (a scalar; per channel also accepted).

    `scale` may require grad (calibration by backpropagation).
    """

    method = "scale"

    def __init__(self, scale: torch.Tensor):
        self.scale = scale
        self._on: dict[torch.device, torch.Tensor] = {}

    def transform(self, dt: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.scale.requires_grad:  # calibration by backprop: the graph must reach the leaf every call
            scale = self.scale.to(dt.device, torch.float32)
        else:  # one copy per device, not one per segment and layer
            if dt.device not in self._on:
                self._on[dt.device] = self.scale.to(dt.device, torch.float32)
            scale = self._on[dt.device]
        if scale.dim() == 1 and scale.numel() > 1:
            scale = _per_channel(scale, dt, channel_dim)
        return dt * scale


class FilterDelta(DeltaTransform):
    """`Δ' = Δ if Δ > threshold else 0`, per channel: LongMamba's token filter.

    A token whose step is zeroed leaves that channel's state untouched: no decay (`exp(0 A) = 1`) and no input
    (`0 B x`). `threshold` is `(channels,)`; a channel with threshold 0 is never filtered (Δ > 0 always, and a Δ that
    underflowed to 0 stays 0).
    """

    method = "filter"

    def __init__(self, threshold: torch.Tensor):
        self.threshold = threshold
        self._on: dict[torch.device, torch.Tensor] = {}

    def transform(self, dt: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if dt.device not in self._on:  # one copy per device, not one per segment
            self._on[dt.device] = self.threshold.to(dt.device, torch.float32)
        threshold = _per_channel(self._on[dt.device], dt, channel_dim)
        return torch.where(dt > threshold, dt, torch.zeros((), dtype=dt.dtype, device=dt.device))


_ATTRIBUTE = "_hf_longssm_delta_transform"


def get_delta_transform(mixer: torch.nn.Module) -> DeltaTransform | None:
    """The transform a mixer applies to Δ in hf_longssm's segment forward, or `None`."""
    return vars(mixer).get(_ATTRIBUTE)


def set_delta_transform(mixer: torch.nn.Module, transform: DeltaTransform | None) -> None:
    """Give a stateful mixer a Δ transform (`None` removes it). Stored outside `nn.Module`'s registries on purpose:
    it is not a weight, and `state_dict` / `save_pretrained` must not see it."""
    if transform is None:
        vars(mixer).pop(_ATTRIBUTE, None)
    else:
        object.__setattr__(mixer, _ATTRIBUTE, transform)


def refuse_plain_forward(mixer: torch.nn.Module) -> None:
    """Raise when transformers' own forward is about to run a mixer whose Δ is transformed (it would ignore it)."""
    transform = get_delta_transform(mixer)
    if transform is not None:
        raise RuntimeError(
            f"Layer {getattr(mixer, 'layer_idx', '?')} carries a training-free length extension (Δ {transform.method})"
            " that only hf_longssm's segment forward applies; transformers' forward (a plain `model(input_ids)`, "
            "`generate()`) would silently ignore it. Run the model through hf_longssm (`hl.forward_with_state`, "
            "`hl.iter_segments`, `hl.evaluation`, `hf-longssm eval`, the lm-eval adapter), or remove the extension "
            "with `hl.extend.remove_extension(model)`."
        )
