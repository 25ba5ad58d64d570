"""`DataCollatorForStatePassing`: segments -> a batch, never padded."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DataCollatorForStatePassing:
    """Stack segments of equal length into a batch for `StatePassingTrainer`.

    Each feature holds `input_ids` and `labels` of `segment_length` tokens, `labels` already shifted (`labels[t]` is
    the token after `input_ids[t]`, so the prediction across the segment boundary is scored), and `reset_mask`
    (a document starts at the segment's first token). Padding would corrupt a carried state, so segments of
    different lengths are an error, not padded.

    Returns:
        `dict` with `input_ids`; `labels`, equal to `input_ids` as transformers expects (the model shifts them), -100
        where the shifted targets are (a loss mask, e.g. the copying task's);
        `shift_labels`, the already shifted targets (transformers' name; the trainer scores these, so the token
        after the segment is predicted too); `reset_mask` (bool) and `segment_index`.
    """

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = {len(f["input_ids"]) for f in features}
        if len(lengths) != 1:
            raise ValueError(
                f"Segments of different lengths {sorted(lengths)} in one batch: streams are never padded. "
                "Build the dataset with hf_longssm.training.data.build_segment_dataset."
            )
        input_ids = torch.stack([torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features])
        labels = torch.stack([torch.as_tensor(f["labels"], dtype=torch.long) for f in features])
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)} differ in shape.")
        unshifted = input_ids
        if (labels == -100).any():  # a loss mask: the unshifted labels (which count the targets) carry it too
            unshifted = input_ids.clone()
            unshifted[:, 1:][labels[:, :-1] == -100] = -100
        return {
            "input_ids": input_ids,
            "labels": unshifted,
            "shift_labels": labels,
            "reset_mask": torch.tensor([bool(f.get("reset_mask", False)) for f in features]),
            "segment_index": torch.tensor([int(f.get("segment_index", -1)) for f in features]),
        }
