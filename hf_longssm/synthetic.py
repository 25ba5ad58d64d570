"""Synthetic copying data: random symbols, a separator, the same symbols again (the paper's copying task).

One example, in the model's token ids (with the byte tokenizer one character is one token):

    x_1 ... x_n | x_1 ... x_n

`x_i` are drawn uniformly and independently from `COPY_SYMBOLS` (16 letters) and `|` is the separator. The copy is
all there is to learn: `x_1 ... x_n` are random and `n` is unknown until the separator, so only the n copied tokens
are targets (and, in training, the EOS the stream builder appends after each document).

Training documents (`copying_documents`): `n` uniform in `1 .. (length - 2) // 2`, the example padded with `.` to
exactly `length - 1` tokens, so that with the EOS the stream builder appends one document is one segment of `length`
tokens, starting at `x_1`; `labels` are -100 everywhere but the copy (the padding is read, never scored; the EOS after
it is a target, a deterministic one). Seeded: the same seed gives the same documents. `evaluation.copying` scores a
model on longer examples, in the same format from a zero state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


COPY_SYMBOLS = "abcdefghijklmnop"
SEPARATOR, PAD = "|", "."
IGNORE_INDEX = -100


@dataclass(frozen=True)
class CopyingVocabulary:
    """The token ids the copying task uses: `symbols` to copy, the `separator`, the `pad` of training documents and
    the `eos` that ends each of them in a stream."""

    symbols: tuple[int, ...]
    separator: int
    pad: int
    eos: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> CopyingVocabulary:
        """Each of `COPY_SYMBOLS`, `SEPARATOR` and `PAD` as one token of `tokenizer` (a byte tokenizer, or any whose
        single letters are single tokens)."""
        ids = {}
        for char in COPY_SYMBOLS + SEPARATOR + PAD:
            encoded = tokenizer(char, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise ValueError(
                    f"The copying task needs {char!r} to be one token; this tokenizer gives {encoded}. Use the byte "
                    "tokenizer (`tokenizer='byte'`) or one whose single letters are single tokens."
                )
            ids[char] = encoded[0]
        if len(set(ids.values())) != len(ids):
            raise ValueError("The tokenizer maps two of the copying task's characters to the same token.")
        if tokenizer.eos_token_id is None:
            raise ValueError("The copying task ends every document with EOS: the tokenizer needs an eos_token_id.")
        symbols = tuple(ids[c] for c in COPY_SYMBOLS)
        return cls(symbols, ids[SEPARATOR], ids[PAD], tokenizer.eos_token_id)


def copying_example(rng: random.Random, vocabulary: CopyingVocabulary, num_symbols: int) -> list[int]:
    """`x_1 ... x_n | x_1 ... x_n` for `n = num_symbols` symbols drawn with `rng` (no leading EOS)."""
    if num_symbols < 1:
        raise ValueError(f"A copying example copies at least one symbol, got num_symbols={num_symbols}.")
    symbols = [rng.choice(vocabulary.symbols) for _ in range(num_symbols)]
    return [*symbols, vocabulary.separator, *symbols]


def copying_documents(tokenizer, length: int, num_documents: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Training documents of the copying task: rows `{"input_ids", "labels"}` of exactly `length - 1` tokens (one
    segment of `length` with the EOS the stream builder appends), `labels` -100 everywhere but the copy.

    Args:
        tokenizer: the model's tokenizer (`CopyingVocabulary.from_tokenizer`).
        length (`int`): the training segment length T (>= 4: one symbol, the separator, its copy, the EOS).
        num_documents (`int`): how many documents.
        seed (`int`): the generator's seed; the same seed gives the same documents.
    """
    if length < 4:
        raise ValueError(f"length={length} cannot hold a copying example (at least 4 tokens with the EOS).")
    vocabulary = CopyingVocabulary.from_tokenizer(tokenizer)
    rng = random.Random(seed)
    rows = []
    for _ in range(num_documents):
        n = rng.randint(1, (length - 2) // 2)
        example = copying_example(rng, vocabulary, n)
        padding = [vocabulary.pad] * (length - 1 - len(example))
        labels = [IGNORE_INDEX] * (n + 1) + example[n + 1 :] + [IGNORE_INDEX] * len(padding)
        rows.append({"input_ids": example + padding, "labels": labels})
    return rows
