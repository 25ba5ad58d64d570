"""A byte-level tokenizer that needs no files: models trained here read any text as bytes."""

from __future__ import annotations


class ByteTokenizer:
    """Token id = byte value + 1; id 0 is EOS (and pad, as in Mamba configs). Vocabulary: 257 ids.

    Implements the part of the transformers tokenizer interface hf_longssm uses (`__call__`, `decode`,
    `eos_token_id`), so the trainer, the evaluation and the passkey task take it like any tokenizer.
    """

    eos_token_id = 0
    pad_token_id = 0
    eos_token = "<eos>"
    vocab_size = 257

    def __call__(self, text: str | list[str], add_special_tokens: bool = False, **kwargs) -> dict:
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [b + 1 for b in text.encode("utf-8")]}

    def decode(self, ids, skip_special_tokens: bool = True, **kwargs) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return bytes(i - 1 for i in ids if 0 < i < 257).decode("utf-8", errors="replace")

    def save_pretrained(self, save_directory, **kwargs) -> tuple[str]:
        """Write a marker file so a saved model says how its ids map to text (Trainer saves the tokenizer)."""
        import json
        import os

        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, "hf_longssm_tokenizer.json")
        with open(path, "w") as f:
            json.dump({"tokenizer_class": "hf_longssm.tokenization.ByteTokenizer", "eos_token_id": 0}, f)
        return (path,)
