"""Copy accuracy by sequence length: the synthetic copying task (`hf_longssm.synthetic`) past the training length.

Each trial is one example `x_1 ... x_n | x_1 ... x_n` of `n = (length - 1) // 2` symbols (the longest copy a
`length`-token sequence holds), read from a zero state in segments with the state carried (bounded memory), starting
at `x_1` as a training segment does (a zero-state model never sees the EOS before it); each copied token is predicted
from the true tokens before it (teacher forcing). Reported: per-token accuracy, and exact match when all n tokens are
right. Seeded per length: a length's examples are the same whatever other lengths are asked.
"""

from __future__ import annotations

import random

import torch

from ..forward import eval_mode, iter_segments
from ..modeling import input_device
from ..synthetic import CopyingVocabulary, copying_example


@torch.no_grad()
def copying_accuracy(
    model,
    tokenizer,
    lengths: list[int],
    *,
    num_trials: int = 8,
    segment_length: int = 4096,
    seed: int = 0,
    attention_state: str = "window",
    attention_window: int | None = None,
) -> list[dict]:
    """Copy accuracy per sequence length (see the module docstring).

    Args:
        model: a causal LM hf_longssm runs in segments.
        tokenizer: its tokenizer (`CopyingVocabulary.from_tokenizer`).
        lengths (`list[int]`): sequence lengths in tokens, strictly increasing, >= 3; each copies
            `(length - 1) // 2` symbols.
        num_trials (`int`): examples per length.
        segment_length (`int`): tokens per forward; the state is carried between segments.
        seed (`int`): the examples' seed.
        attention_state, attention_window: a hybrid's attention policy (see `CarriedState`).

    Returns:
        `list[dict]`: per length `{"length", "copy_tokens", "token_accuracy", "exact_match", "trials"}`.
    """
    check_copying_lengths(lengths)
    if num_trials < 1:
        raise ValueError(f"num_trials must be >= 1, got {num_trials}.")
    vocabulary = CopyingVocabulary.from_tokenizer(tokenizer)
    attention = {"attention_state": attention_state, "attention_window": attention_window}
    device = input_device(model)
    rows = []
    with eval_mode(model):
        for length in lengths:
            n = (length - 1) // 2
            rng = random.Random(f"copying-{seed}-{length}")
            right = exact = 0
            for _ in range(num_trials):
                ids = torch.tensor([copying_example(rng, vocabulary, n)], device=device)
                predicted = torch.cat(
                    [out.logits.argmax(-1) for _, _, out, _ in iter_segments(model, ids, segment_length, **attention)],
                    dim=1,
                )
                # Position t predicts token t + 1: the copy x_1 .. x_n (ids[n + 1:]) is predicted at n .. 2n - 1.
                hits = predicted[0, n : 2 * n] == ids[0, n + 1 :]
                right += int(hits.sum())
                exact += bool(hits.all())
            rows.append(
                {
                    "length": length,
                    "copy_tokens": n,
                    "token_accuracy": right / (n * num_trials),
                    "exact_match": exact / num_trials,
                    "trials": num_trials,
                }
            )
    return rows


def check_copying_lengths(lengths) -> None:
    """Refuse sequence lengths the copying task cannot score: not strictly increasing, or under 3 tokens (one symbol,
    the separator, its copy)."""
    lengths = list(lengths)
    if not lengths or lengths != sorted(set(lengths)) or lengths[0] < 3:
        raise ValueError(f"Copying lengths must be strictly increasing and >= 3 tokens, got {lengths}.")
