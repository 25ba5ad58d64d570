"""Documents -> equal-length token rows for evaluation (too-short documents are skipped and reported, never padded)."""

from __future__ import annotations

import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)


def documents_to_input_ids(
    documents, tokenizer, length: int, num_sequences: int | None = None, text_column: str = "text"
) -> torch.LongTensor:
    """The first `length` tokens of each document long enough, as a `[N, length]` tensor.

    Args:
        documents: strings, or rows with `text_column` / `input_ids` (e.g. a `datasets` dataset).
        length (`int`): tokens per sequence.
        num_sequences (`int`, *optional*): stop after this many rows.
    """
    if isinstance(documents, dict):
        raise ValueError(
            f"Evaluation documents given as a dict ({sorted(documents)}): give one dataset; evaluate each set with "
            "its own trainer.evaluate(eval_dataset=..., metric_key_prefix=...) call."
        )
    rows, skipped = [], []
    for i, doc in enumerate(documents):
        if tokenizer is None and not (isinstance(doc, dict) and "input_ids" in doc):
            raise ValueError(
                "The evaluation documents are text: pass the tokenizer (processing_class=...) or give input_ids."
            )
        if isinstance(doc, dict):
            ids = doc["input_ids"] if "input_ids" in doc else tokenizer(doc[text_column])["input_ids"]
        else:
            ids = tokenizer(doc)["input_ids"]
        if len(ids) < length:
            skipped.append((i, len(ids)))
            continue
        rows.append(list(ids[:length]))
        if num_sequences is not None and len(rows) == num_sequences:
            break
    if skipped:
        logger.warning(f"Skipped {len(skipped)} documents shorter than {length} tokens: {skipped[:5]}...")
    if not rows:
        longest = max((n for _, n in skipped), default=0)
        raise ValueError(
            f"No document has {length} tokens (the longest has {longest}). Lower the length (--length, "
            "eval_max_length) or give longer documents; documents are never padded."
        )
    return torch.tensor(rows, dtype=torch.long)
