"""A uniform Δ scale on every Mamba layer: the sanity baseline of the training-free methods.

Scaling every step by `train_length / target_length` makes a channel's total decay over the target length what it
was over the training length (`exp(A Σ Δ)`), at the price of every token's input weight (`Δ B x`).
"""

from __future__ import annotations

import math

import torch

from ..extension import LengthExtension, install_extension, stateful_mixers


def delta_scale(
    model: torch.nn.Module,
    scale: float | None = None,
    *,
    train_length: int | None = None,
    target_length: int | None = None,
) -> torch.nn.Module:
    """Multiply every Mamba layer's Δ by `scale` (or by `train_length / target_length`); returns `model`.

    Example:
        >>> model = hl.extend.delta_scale(model, train_length=2048, target_length=16384)  # Δ x 0.125
    """
    if scale is None:
        if not train_length or not target_length:
            raise ValueError("Give `scale`, or both `train_length` and `target_length` (scale = their ratio).")
        if target_length <= train_length:
            raise ValueError(
                f"target_length ({target_length}) must exceed train_length ({train_length}): there is nothing to "
                "extend (the ratio would lengthen every step)."
            )
        scale = train_length / target_length
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"The Δ scale must be a positive finite number, got {scale}.")
    layers = len(stateful_mixers(model))
    settings = {"scale": float(scale), "train_length": train_length, "target_length": target_length}
    scales = [torch.tensor(float(scale)) for _ in range(layers)]
    return install_extension(model, LengthExtension("delta_scale", scales, settings))
