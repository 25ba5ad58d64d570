"""Effective remembrance (how much the far past sways the next token) and state norms by position."""

from __future__ import annotations

import torch

from ..forward import eval_mode, iter_segments, prefill
from ..modeling import input_device


def _next_token_probs(model, ids: torch.LongTensor, segment_length: int) -> torch.Tensor:
    out, _ = prefill(model, ids, segment_length)
    return torch.softmax(out.logits[:, -1].float(), dim=-1)


@torch.no_grad()
def effective_remembrance(
    model, input_ids: torch.LongTensor, T: int, ts: list[int], segment_length: int = 4096
) -> dict[int, float]:
    """EffRem_T(t) = TV(q(. | x[0:T]), q(. | x[t:T])), averaged over the rows of `input_ids`.

    `q` is the model's next-token distribution after the context and TV = 1/2 sum |q - q'|. EffRem_T(0) = 0; values
    near 1 at large t mean tokens far back still change the prediction.

    Returns:
        `dict[int, float]`: EffRem_T(t) for every t in `ts`.
    """
    if input_ids.shape[1] < T:
        raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, fewer than T={T}.")
    if any(not 0 <= t < T for t in ts):
        raise ValueError(f"Every t must satisfy 0 <= t < T={T}; got {ts}.")
    ids = input_ids[:, :T].to(input_device(model))
    with eval_mode(model):
        full = _next_token_probs(model, ids, segment_length)
        return {
            t: 0.5 * (full - _next_token_probs(model, ids[:, t:], segment_length)).abs().sum(-1).mean().item()
            for t in ts
        }


@torch.no_grad()
def state_norms_by_position(model, input_ids: torch.LongTensor, segment_length: int = 1024) -> dict[str, list]:
    """Per-layer SSM state norm after every `segment_length` tokens (the drift past the training length).

    Returns:
        `{"positions": [p, ...], "norms": [[layer norms at p], ...]}` (norms averaged over rows).
    """
    ids = input_ids.to(input_device(model))
    positions, norms = [], []
    with eval_mode(model):
        for _, end, _, state in iter_segments(model, ids, segment_length):
            positions.append(end)
            norms.append(state.norms().tolist())
    return {"positions": positions, "norms": norms}
