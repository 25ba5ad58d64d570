"""Passkey retrieval: a 5-digit key hidden at a relative depth inside filler of an exact token length."""

from __future__ import annotations

import random
import re

import torch

from ..extension import get_extension
from ..forward import eval_mode, forward_with_state, prefill
from ..modeling import cache_argument, input_device, unwrap_model


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
TASK = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
QUESTION = "What is the pass key? The pass key is"


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_passkey_prompt(tokenizer, length: int, depth: float, passkey: str) -> tuple[list[int], int]:
    """Token ids of a passkey prompt of exactly `length` tokens, and the token index where the key line starts.

    Args:
        tokenizer: any tokenizer; the digits of the key must survive an encode/decode round trip.
        length (`int`): total prompt length in tokens.
        depth (`float`): where the key line sits in the filler, 0.0 (start) to 1.0 (end).
        passkey (`str`): the key, e.g. "48213".
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}.")
    if tokenizer.decode(_encode(tokenizer, f" {passkey}")).strip() != passkey:
        raise ValueError("The tokenizer cannot encode and decode the digits of the passkey; use one that can.")
    key_line = f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "
    head, key_line, tail = _encode(tokenizer, TASK), _encode(tokenizer, key_line), _encode(tokenizer, QUESTION)
    filler_budget = length - len(head) - len(key_line) - len(tail)
    if filler_budget < 0:
        raise ValueError(f"length={length} is shorter than the task itself ({length - filler_budget} tokens).")
    unit = _encode(tokenizer, FILLER)
    filler = (unit * (filler_budget // len(unit) + 1))[:filler_budget]
    cut = round(depth * filler_budget)
    ids = head + filler[:cut] + key_line + filler[cut:] + tail
    return ids, len(head) + cut


def is_the_key(text: str, key: str) -> bool:
    """Whether the answer's first number is exactly `key` (" 153067" is not 15306; " 15306." and "15306 is" are)."""
    number = re.match(r"\s*(\d+)", text)
    return number is not None and number.group(1) == key


@torch.no_grad()
def greedy_from_state(model, state, first_token: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy decoding with transformers' own one-token path, continuing from a carried state; a hybrid decodes
    through its carried state (its attention policy keeps what it keeps, which transformers' cache cannot), and so
    does a model with a training-free length extension (transformers' forward would not apply it)."""
    token, generated = first_token, []
    if state.keys or get_extension(model) is not None:
        for _ in range(max_new_tokens):
            output, state = forward_with_state(model, token, state)
            token = output.logits[:, -1].argmax(-1, keepdim=True)
            generated.append(int(token))
        return generated
    cache = state.to_cache(unwrap_model(model).config)
    for _ in range(max_new_tokens):
        logits = model(input_ids=token, use_cache=True, **{cache_argument(model): cache}).logits[:, -1]
        token = logits.argmax(-1, keepdim=True)
        generated.append(int(token))
    return generated


@torch.no_grad()
def passkey_retrieval(
    model,
    tokenizer,
    lengths: list[int],
    depths: list[float],
    *,
    num_trials: int = 3,
    segment_length: int = 4096,
    seed: int = 0,
    attention_state: str = "window",
    attention_window: int | None = None,
) -> list[dict]:
    """Accuracy of retrieving a random 5-digit passkey, per (length, depth).

    The prompt is prefilled in segments with the state carried, then decoded greedily from that state; a trial is
    right when the generated text starts with the key (exact match). Seeded and reproducible.

    `attention_state` / `attention_window`: a hybrid's attention policy (see `CarriedState`).

    Returns:
        `list[dict]`: `{"length", "depth", "accuracy", "trials"}` per cell.
    """
    attention = {"attention_state": attention_state, "attention_window": attention_window}
    if list(lengths) != sorted(set(lengths)):
        raise ValueError(f"lengths must be strictly increasing, got {lengths}.")
    device = input_device(model)
    rng = random.Random(seed)
    results = []
    with eval_mode(model):
        for length in lengths:
            for depth in depths:
                correct = 0
                for _ in range(num_trials):
                    key = str(rng.randint(10000, 99999))
                    ids, _ = build_passkey_prompt(tokenizer, length, depth, key)
                    ids = torch.tensor([ids], device=device)
                    _, state = prefill(model, ids[:, :-1], segment_length, **attention)
                    answer_tokens = len(_encode(tokenizer, f" {key}")) + 1
                    generated = greedy_from_state(model, state, ids[:, -1:], answer_tokens)
                    correct += is_the_key(tokenizer.decode(generated), key)
                results.append(
                    {"length": length, "depth": depth, "accuracy": correct / num_trials, "trials": num_trials}
                )
    return results
