"""LongMamba (Ye et al., ICLR 2025): filter unimportant tokens out of the "global" channels on long inputs.

A channel (a Mamba-2 head; a Mamba-1 channel) is *global* when its cumulative decay over the training length stays
large, `exp(A Σ_t Δ_t) > c`: it carries information across the whole training context, and on a longer input its
state would be driven far beyond anything it saw. In global channels only, tokens whose step Δ is not above a
threshold θ get Δ = 0 (`modeling/delta.py`): the state neither decays nor takes the token in. θ is chosen so that the
Δ the channel accumulates over the target length, counting only the kept tokens, matches what it accumulated over the
training length.

Calibration, as in the paper's code (`load_align_target.py`, method `dt_thre`), per calibration sample of
`train_length` tokens, per layer and channel: clamp Δ at its top-`clamp_top` value; `Σ Δ` and the decay
`exp(A Σ Δ)`; sort the clamped Δ in decreasing order, stretch the sorted curve to `target_length` (linear
interpolation: the same distribution of steps over a longer input), and take θ as the first value at which its
running sum exceeds `Σ Δ`. θ and the decay are averaged over the samples; channels with decay > `c` are global and
filter with threshold `b θ`.

Defaults are the paper's: c = 5e-2, b = 1.0, the clamp at the top 15% (its code calibrates at 10, 15 and 20%), and it
calibrates from 100 samples of 2,000 tokens. Two things are ours: the Mamba-1 version (the release is Mamba-2 only):
a Mamba-1 channel has one Δ for its `state_size` decays `A_{d,n}`, and it is global when its slowest decay (the
largest `A_{d,n}`) stays above `c`; and the threshold is calibrated for one `target_length` and applied to every
segment, so evaluation runs in bounded memory (the code picks the nearest of a table of lengths from each input's
length, which needs the whole input at once; its table starts above 2k, so short inputs are not filtered there --
here, do not install the extension for inputs shorter than `train_length`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..extension import LengthExtension, calibrating, install_extension
from ..forward import eval_mode, forward_with_state
from ..modeling import input_device
from ..modeling.delta import DeltaTransform, set_delta_transform


def long_mamba(
    model: torch.nn.Module,
    calibration_ids: torch.LongTensor,
    *,
    train_length: int,
    target_length: int,
    c: float = 5e-2,
    b: float = 1.0,
    clamp_top: float = 0.15,
    batch_size: int = 1,
) -> torch.nn.Module:
    """Calibrate LongMamba's per-channel Δ thresholds for `target_length` and install them; returns `model`.

    Args:
        model: a supported model (every Mamba layer; a hybrid's attention layers are untouched).
        calibration_ids (`torch.LongTensor` of shape `(samples, >= train_length)`): calibration text (the paper: 100
            samples of 2,000 tokens), never the text you will evaluate on.
        train_length (`int`): the context the model was trained at; each sample's first `train_length` tokens are
            read in one forward.
        target_length (`int`): the input length to filter for (> `train_length`).
        c (`float`, *optional*, defaults to 5e-2): a channel is global when its decay over `train_length` > `c`.
        b (`float`, *optional*, defaults to 1.0): multiplies every threshold.
        clamp_top (`float`, *optional*, defaults to 0.15): Δ is clamped at its top-`clamp_top` quantile per channel
            before the statistics (outlier steps).
        batch_size (`int`, *optional*, defaults to 1): calibration rows per forward.
    """
    if target_length <= train_length:
        raise ValueError(
            f"target_length ({target_length}) must exceed train_length ({train_length}): LongMamba filters only "
            "inputs longer than the training context."
        )
    if not 0 < clamp_top <= 1:
        raise ValueError(f"clamp_top must be in (0, 1], got {clamp_top}.")
    if calibration_ids.dim() != 2 or calibration_ids.shape[1] < train_length:
        raise ValueError(
            f"calibration_ids must be (samples, >= train_length={train_length}) token ids, got "
            f"{tuple(calibration_ids.shape)}."
        )
    start = time.perf_counter()
    with calibrating(model) as mixers:
        recorders = [_Statistics(_slowest_decay_rate(m), clamp_top, target_length) for m in mixers]
        for mixer, recorder in zip(mixers, recorders):
            set_delta_transform(mixer, recorder)
        ids = calibration_ids[:, :train_length]
        with torch.no_grad(), eval_mode(model):
            for row in range(0, ids.shape[0], batch_size):
                forward_with_state(model, ids[row : row + batch_size].to(input_device(model)))
    thresholds, global_channels = [], []
    for recorder in recorders:
        decay, threshold = recorder.decay_sum / recorder.count, recorder.threshold_sum / recorder.count
        is_global = decay > c
        thresholds.append(torch.where(is_global, b * threshold, torch.zeros_like(threshold)).float().cpu())
        global_channels.append(int(is_global.sum()))
    settings = {
        "train_length": train_length,
        "target_length": target_length,
        "c": c,
        "b": b,
        "clamp_top": clamp_top,
        "calibration_samples": int(calibration_ids.shape[0]),
        "global_channels": global_channels,
        "channels": [int(t.numel()) for t in thresholds],
        "calibration_seconds": round(time.perf_counter() - start, 1),
    }
    return install_extension(model, LengthExtension("long_mamba", thresholds, settings))


def _slowest_decay_rate(mixer: torch.nn.Module) -> torch.Tensor:
    """Per channel the slowest `A`: Mamba-2's one `A` per head; the largest of a Mamba-1 channel's `A_{d,n}`."""
    A = -torch.exp(mixer.A_log.detach().float())
    return A.max(dim=-1).values if A.dim() == 2 else A


class _Statistics(DeltaTransform):
    """Leaves Δ as it is and adds up, per channel, the calibration sample's decay and threshold (module docstring)."""

    method = "calibration"

    def __init__(self, decay_rate: torch.Tensor, clamp_top: float, target_length: int, channels_per_pass: int = 64):
        self.decay_rate, self.clamp_top, self.target_length = decay_rate, clamp_top, target_length
        self.channels_per_pass = channels_per_pass  # bounds the (channels, target_length) stretched curves
        self.decay_sum = self.threshold_sum = 0.0
        self.count = 0

    def transform(self, dt: torch.Tensor, channel_dim: int) -> torch.Tensor:
        steps = dt.detach().float().movedim(channel_dim, 1)  # (b, channels, length)
        length = steps.shape[-1]
        top = steps.topk(max(1, int(length * self.clamp_top)), dim=-1).values.min(dim=-1, keepdim=True).values
        clamped = torch.minimum(steps, top)
        total = clamped.sum(-1)  # (b, channels)
        self.decay_sum = self.decay_sum + torch.exp(self.decay_rate.to(total.device) * total).sum(0)
        ordered = clamped.sort(dim=-1, descending=True).values
        thresholds = []
        for first in range(0, ordered.shape[1], self.channels_per_pass):
            part = ordered[:, first : first + self.channels_per_pass]
            batch, channels, _ = part.shape
            stretched = F.interpolate(
                part.reshape(batch * channels, 1, length), size=self.target_length, mode="linear", align_corners=False
            ).reshape(batch, channels, self.target_length)
            exceeds = stretched.cumsum(-1) > total[:, first : first + channels, None]
            rank = (exceeds.int().argmax(-1) + 1).clamp(max=self.target_length - 1)
            thresholds.append(stretched.gather(-1, rank[..., None]).squeeze(-1))
        self.threshold_sum = self.threshold_sum + torch.cat(thresholds, dim=1).sum(0)
        self.count += steps.shape[0]
        return dt
