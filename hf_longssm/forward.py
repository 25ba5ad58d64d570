"""`forward_with_state`: one model call over a segment, from a carried state to the segment's final state; and the
one prefill loop (`iter_segments`) that reads a long input segment by segment, which every evaluation uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.utils import logging

from .modeling import (
    SegmentStates,
    attention_layers,
    cache_argument,
    cache_kept_under_checkpointing,
    get_architecture,
    kv_shape,
    prepare_model,
    ssm_layers,
    state_kinds,
    state_shapes,
)
from .modeling.hybrid import segment_attention_masks
from .modeling.registry import reentrant_checkpointing
from .state import CarriedState


logger = logging.get_logger(__name__)


def _compute_dtypes(model, dtype: torch.dtype, device: torch.device) -> set[torch.dtype]:
    """The dtypes a conv window may carry: the model's, the autocast dtype while autocast is on, and under FSDP2's
    `MixedPrecisionPolicy` both its compute dtype and float32 (its weights read as either, depending on whether a
    forward without backward left them gathered)."""
    dtypes = {dtype}
    if torch.is_autocast_enabled(device.type):
        dtypes.add(torch.get_autocast_dtype(device.type))
    fsdp_state = getattr(model, "_get_fsdp_state", None)  # torch's FSDPModule
    policy = getattr(fsdp_state(), "_mp_policy", None) if fsdp_state is not None else None
    if getattr(policy, "param_dtype", None) is not None:
        dtypes |= {policy.param_dtype, torch.float32}
    return dtypes


def _check_state(state: CarriedState, model, batch_size: int, dtype: torch.dtype, device: torch.device) -> None:
    theirs = getattr(state.config, "model_type", None)
    if theirs is not None and theirs != model.config.model_type:
        raise ValueError(
            f"The state is a {theirs} model's, this model is {model.config.model_type}: states do not carry across "
            "model families. Build a state from this model (CarriedState.zeros(model, batch_size))."
        )
    expected = state_shapes(model.config)
    attention = len(attention_layers(model.config))
    names = [kind.name for kind in state_kinds(model.config)]
    if sorted(state.states) != sorted(names):
        raise ValueError(
            f"The state carries {list(state.states)} per layer but this model's layers carry {names}: it is another "
            "model family's state."
        )
    if state.num_layers != len(expected) or len(state.keys) != attention:
        with_attention = bool(state.keys) or bool(attention)
        ours = f"{state.num_layers} layers" + (f" (+{len(state.keys)} attention)" if with_attention else "")
        theirs = f"{len(expected)}" + (f" (+{attention} attention)" if with_attention else "")
        raise ValueError(f"The state has {ours} but the model has {theirs}: it is another model's state.")
    if state.batch_size != batch_size:
        raise ValueError(
            f"The state has batch size {state.batch_size} but input_ids has {batch_size} rows. Build a state for "
            f"this batch (CarriedState.zeros(model, {batch_size})) or select rows with state.permute(index)."
        )
    if state.keys:
        heads, head_dim = kv_shape(model.config)
        if (state.keys[0].shape[1], state.keys[0].shape[3]) != (heads, head_dim):
            raise ValueError(
                f"The state's attention keys have {state.keys[0].shape[1]} heads of {state.keys[0].shape[3]} but the "
                f"model's have {heads} of {head_dim}: it is another model's state."
            )
    for layer_idx, shapes in enumerate(expected):
        ours = [tuple(state.states[name][layer_idx].shape) for name in names]
        if [shape[1:] for shape in ours] != [tuple(shape) for shape in shapes]:
            raise ValueError(
                f"Layer {layer_idx}: state shapes {' / '.join(map(str, ours))} do not match the model "
                f"({' / '.join(map(str, shapes))} per row)."
            )
    allowed = _compute_dtypes(model, dtype, device)
    windows = [state.states[name][0] for name in state.window_names]
    if windows and windows[0].dtype not in allowed:
        raise ValueError(
            f"The state's conv windows are {windows[0].dtype} but the model runs in "
            f"{' or '.join(sorted(str(d) for d in allowed))}: use state.to(dtype={dtype}) or build the state from "
            "this model."
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

    Precision: the final state has the initial state's dtypes, whatever precision the segment ran in. A zero state
    has conv windows in the model's parameter dtype and SSM states in float32 (the scans compute in float32), so
    under `torch.autocast` over float32 weights (`bf16=True` in the trainer) the windows stay float32 (holding the
    bf16-rounded inputs exactly) and the SSM states lose nothing between segments; with bfloat16 weights the windows
    are bfloat16. A state whose windows are neither the model's dtype nor the active autocast dtype is refused.
    """
    base = prepare_model(model)
    inputs_embeds = kwargs.get("inputs_embeds")
    reference = input_ids if input_ids is not None else inputs_embeds
    if reference is None:
        raise ValueError("Pass input_ids (or inputs_embeds).")
    if reference.dim() != (2 if input_ids is not None else 3):
        raise ValueError(
            f"{'input_ids' if input_ids is not None else 'inputs_embeds'} has shape {tuple(reference.shape)}: give a "
            "batch dimension first, (batch, seq_len) for input_ids (e.g. input_ids[None] for one sequence)."
        )
    batch_size = reference.shape[0]
    if reference.shape[1] == 0:
        raise ValueError("The segment has no tokens (input_ids of length 0): give at least one token per segment.")
    if input_ids is not None and not input_ids.is_cuda:  # on CUDA the check would sync the host every segment
        check_token_ids(input_ids, base.get_input_embeddings().num_embeddings)
    dtype = base.get_input_embeddings().weight.dtype if inputs_embeds is None else inputs_embeds.dtype

    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError(
            "attention_mask has zeros: padding inside a carried segment changes the state. Feed unpadded streams "
            "(hf_longssm.training.data lays documents out that way) or run padded rows without a carried state."
        )
    if state is None:
        state = CarriedState.zeros(base, batch_size, device=reference.device, dtype=dtype)
    else:
        # Not moved here: each layer's mixer moves its own part to the device it runs on (`SegmentStates.run_layer`),
        # which with a `device_map` differs from layer to layer.
        _check_state(state, base, batch_size, dtype, reference.device)

    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:  # older transformers
        checkpointing = base.is_gradient_checkpointing
    if checkpointing and base.training and any(t.requires_grad for t in state.all_tensors):
        raise ValueError(
            "Gradient checkpointing cannot backpropagate into a carried state that requires grad. Detach the state "
            "(state.detach(), as TBTT and state passing do) or set `activation_checkpointing=False` "
            "(its older name: `gradient_checkpointing=False`)."
        )

    if kwargs.get("shift_labels") is not None:
        kwargs["shift_labels"] = kwargs["shift_labels"].contiguous()  # transformers' loss calls .view(-1)
        if labels is None:
            labels = kwargs["shift_labels"]  # the model computes a loss only when `labels` is set
    if labels is not None:
        kwargs["labels"] = labels
    loss_kwargs = {}
    if not get_architecture(base).model_computes_loss:  # fla: transformers' loss from the logits, as for the others
        loss_kwargs = {k: kwargs.pop(k) for k in ("labels", "shift_labels", "num_items_in_batch") if k in kwargs}

    length = reference.shape[1]
    kept = state.kept_keys(length)
    names = [kind.name for kind in state_kinds(base.config)]
    segment = SegmentStates(
        [state.states[name] for name in names],
        ssm_layers(base.config),
        state.keys,
        state.values,
        attention_layers(base.config),
        kept,
    )
    kwargs[cache_argument(base)] = segment
    if state.keys:  # a hybrid: its attention sees [carried keys, segment], at the positions that follow
        if kwargs.get("position_ids") is not None:
            raise ValueError(
                "position_ids with a hybrid's carried state: each segment runs at the positions after the tokens the "
                "state has read (state.position). Drop position_ids."
            )
        valid = state.key_valid.to(reference.device)
        kwargs["attention_mask"] = segment_attention_masks(base.config, valid, length, dtype)
        kwargs["position_ids"] = torch.arange(state.position, state.position + length, device=reference.device)[None]
    if checkpointing and base.training and reentrant_checkpointing(base):
        # Reentrant checkpointing runs each layer's forward without autograd: the final states it records carry no
        # graph, and a loss in a later segment would silently not reach this one.
        logger.warning_once(
            "hf_longssm: with reentrant activation checkpointing (use_reentrant=True) the final states carry no "
            "gradient: backpropagating through segment boundaries needs use_reentrant=False. (State passing and "
            "TBTT detach them anyway.)"
        )
    # Only a checkpointed layer in training drops its cache argument: nothing to do per segment otherwise.
    keep_cache = cache_kept_under_checkpointing(base) if checkpointing and base.training else contextlib.nullcontext()
    with keep_cache:
        output = model(input_ids=input_ids, use_cache=False, **kwargs)
    if loss_kwargs.get("labels") is not None:
        output.loss = ForCausalLMLoss(output.logits, vocab_size=output.logits.shape[-1], **loss_kwargs)
    final = state._with(states=dict(zip(names, segment.final_states())), position=state.position + length)
    if state.attention_state == "window" and state.attention_window is None:
        final.attention_window = kept  # the default window (the first segment's length) stays for later segments
    if state.keys:
        final.keys, final.values = segment.final_attention()
        valid = torch.cat([valid, torch.ones(batch_size, length, dtype=torch.bool, device=valid.device)], dim=1)
        final.key_valid = valid[:, valid.shape[1] - final.num_keys :]
    return output, final


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """A clear error for token ids outside `[0, vocab_size)` (the embedding would raise an index error)."""
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(
            f"Token ids must be in [0, {vocab_size}) for this model's embedding; got ids from {int(input_ids.min())} "
            f"to {int(input_ids.max())}. Was the data tokenized with another tokenizer?"
        )


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model.eval()` for the block, then the caller's mode back (a training loop that evaluates keeps training)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def iter_segments(
    model: torch.nn.Module,
    input_ids: torch.LongTensor,
    segment_length: int,
    state: CarriedState | None = None,
    **attention: Any,
) -> Iterator[tuple[int, int, Any, CarriedState]]:
    """Read `input_ids` in segments of `segment_length` tokens with the state carried: the prefill loop.

    Memory is one segment's activations whatever the length. Call it under `torch.no_grad()` and `eval_mode(model)`
    for evaluation.

    Args:
        model: a supported causal LM (or bare model).
        input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): on the model's device.
        segment_length (`int`): tokens per forward.
        state (`CarriedState`, *optional*): the state before the first token; `None` means zeros.
        attention: for a hybrid started from zeros, `attention_state` / `attention_window` (see `CarriedState`).

    Yields:
        `(start, end, output, state)` per segment: its token span `[start, end)`, the model's output on it and the
        state after it.
    """
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}.")
    if state is None:  # a hybrid's default window is one segment, whatever the length of the last one
        attention = {"attention_state": "window", **attention}
        attention["attention_window"] = attention.get("attention_window") or segment_length
        state = CarriedState.zeros(model, input_ids.shape[0], device=input_ids.device, **attention)
    for start in range(0, input_ids.shape[1], segment_length):
        end = min(start + segment_length, input_ids.shape[1])
        output, state = forward_with_state(model, input_ids[:, start:end], state)
        yield start, end, output, state


def prefill(
    model: torch.nn.Module,
    input_ids: torch.LongTensor,
    segment_length: int,
    state: CarriedState | None = None,
    **attention: Any,
) -> tuple[Any, CarriedState]:
    """The last segment's output and the state after all of `input_ids`, read segment by segment (`attention`: as
    for `iter_segments`)."""
    last = None
    for last in iter_segments(model, input_ids, segment_length, state, **attention):  # noqa: B007 (the last is kept)
        pass
    if last is None:
        raise ValueError("prefill needs at least one token.")
    return last[2], last[3]
