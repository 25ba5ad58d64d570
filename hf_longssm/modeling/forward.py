"""`forward_with_state`: one model call over a segment, from a carried state to the segment's final state."""

from __future__ import annotations

from typing import Any

import torch

from ..state import CarriedState, SegmentStates
from .registry import prepare_model, state_shapes


def _check_state(state: CarriedState, model, batch_size: int, dtype: torch.dtype) -> None:
    expected = state_shapes(model.config)
    if state.num_layers != len(expected):
        raise ValueError(
            f"The state has {state.num_layers} layers but the model has {len(expected)}: it is another model's state."
        )
    if state.batch_size != batch_size:
        raise ValueError(
            f"The state has batch size {state.batch_size} but input_ids has {batch_size} rows. Build a state for "
            f"this batch (CarriedState.zeros(model, {batch_size})) or select rows with state.permute(index)."
        )
    for layer_idx, ((conv_shape, ssm_shape), conv, ssm) in enumerate(
        zip(expected, state.conv_states, state.recurrent_states)
    ):
        if tuple(conv.shape[1:]) != conv_shape or tuple(ssm.shape[1:]) != ssm_shape:
            raise ValueError(
                f"Layer {layer_idx}: state shapes {tuple(conv.shape)} / {tuple(ssm.shape)} do not match the model "
                f"({conv_shape} / {ssm_shape} per row)."
            )
    if state.conv_states[0].dtype != dtype:
        raise ValueError(
            f"The state's conv windows are {state.conv_states[0].dtype} but the model runs in {dtype}: "
            f"use state.to(dtype={dtype}) or build the state from this model."
        )


def forward_with_state(
    model: torch.nn.Module,
    input_ids: torch.LongTensor | None = None,
    state: CarriedState | None = None,
    *,
    labels: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[Any, CarriedState]:
    """Run `model` on a segment starting from `state` and return its usual output and the final state.

    Feeding a sequence in segments, each starting from the previous segment's final state, gives the same logits as
    one pass over the whole sequence (float32, 1e-4), with autograd through every segment.

    Args:
        model (`torch.nn.Module`): a Mamba / FalconMamba / Mamba-2 model (bare or `*ForCausalLM`), possibly wrapped
            by PEFT, DDP or Accelerate. Its mixers are switched to hf_longssm's stateful subclasses on first use.
        input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): the segment (or pass `inputs_embeds=`).
        state (`CarriedState`, *optional*): the state before the segment; `None` means zeros.
        labels (`torch.LongTensor`, *optional*): as in transformers, shifted inside the model, so the prediction of
            the token after the segment is not scored. To keep it, pass `shift_labels=` instead: targets already
            aligned with `input_ids` (`shift_labels[:, t]` is the token after position `t`, the first token of the
            next segment at the end). Then the mean of the segment losses equals the one-pass loss.
        attention_mask (`torch.Tensor`, *optional*): only all-ones masks are accepted: padding inside a carried
            segment would change the state.
        kwargs: passed to the model (`shift_labels`, `num_items_in_batch`, `inputs_embeds`, `logits_to_keep`, ...).

    Returns:
        `tuple(ModelOutput, CarriedState)`: the model's output (`logits`, `loss` when labels are given) and the final
        state of every layer (fresh tensors, still attached to the graph: call `.detach()` to cut it).
    """
    base = prepare_model(model)
    inputs_embeds = kwargs.get("inputs_embeds")
    reference = input_ids if input_ids is not None else inputs_embeds
    if reference is None:
        raise ValueError("Pass input_ids (or inputs_embeds).")
    batch_size = reference.shape[0]
    dtype = base.get_input_embeddings().weight.dtype if inputs_embeds is None else inputs_embeds.dtype

    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError(
            "attention_mask has zeros: padding inside a carried segment changes the state. Feed unpadded streams "
            "(hf_longssm.data lays documents out that way) or run padded rows without a carried state."
        )
    if state is None:
        state = CarriedState.zeros(base, batch_size, device=reference.device, dtype=dtype)
    else:
        _check_state(state, base, batch_size, dtype)
        if state.device != reference.device:
            state = state.to(device=reference.device)

    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5.2x
        checkpointing = base.is_gradient_checkpointing
    if checkpointing and base.training and any(t.requires_grad for t in state.conv_states + state.recurrent_states):
        raise ValueError(
            "Gradient checkpointing cannot backpropagate into a carried state that requires grad. Detach the state "
            "(state.detach(), as TBTT and state passing do) or set `gradient_checkpointing=False`."
        )

    if kwargs.get("shift_labels") is not None:
        kwargs["shift_labels"] = kwargs["shift_labels"].contiguous()  # transformers' loss calls .view(-1)
        if labels is None:
            labels = kwargs["shift_labels"]  # the model computes a loss only when `labels` is set
    if labels is not None:
        kwargs["labels"] = labels

    segment = SegmentStates(state)
    output = model(input_ids=input_ids, cache_params=segment, use_cache=False, **kwargs)
    return output, segment.final_state()
