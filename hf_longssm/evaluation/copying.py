"""Copy accuracy by sequence length: the synthetic copying task (`hf_longssm.synthetic`) past the training length.

Each trial is one example of `n = (length - 2) // 2` symbols (the longest copy a `length`-token sequence holds), read
from a zero state in segments with the state carried (bounded memory); each copied token is predicted from the true
tokens before it (teacher forcing). Reported: per-token accuracy, and exact match when all n tokens are right. Seeded.
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
        lengths (`list[int]`): sequence lengths in tokens, strictly increasing; each copies `(length - 2) // 2`
            symbols.
        num_trials (`int`): examples per length.
        segment_length (`int`): tokens per forward; the state is carried between segments.
        seed (`int`): the examples' seed.
        attention_state, attention_window: a hybrid's attention policy (see `CarriedState`).

    Returns:
        `list[dict]`: per length `{"length", "copy_tokens", "token_accuracy", "exact_match", "trials"}`.
    """
    if list(lengths) != sorted(set(lengths)) or lengths[0] < 4:
        raise ValueError(f"lengths must be strictly increasing and >= 4, got {lengths}.")
    vocabulary = CopyingVocabulary.from_tokenizer(tokenizer)
    attention = {"attention_state": attention_state, "attention_window": attention_window}
    device = input_device(model)
    rng = random.Random(seed)
    rows = []
    with eval_mode(model):
        for length in lengths:
            n = (length - 2) // 2
            right = exact = 0
            for _ in range(num_trials):
                ids = torch.tensor([[vocabulary.eos, *copying_example(rng, vocabulary, n)]], device=device)
                predicted = torch.cat(
                    [out.logits.argmax(-1) for _, _, out, _ in iter_segments(model, ids, segment_length, **attention)],
                    dim=1,
                )
                # Position t predicts token t + 1: the copy x_1 .. x_n (ids[n + 2:]) is predicted at n + 1 .. 2n.
                hits = predicted[0, n + 1 : 2 * n + 1] == ids[0, n + 2 :]
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
