"""`evaluate` modules shipped with the package, loadable offline, and model loading by Hub id or path."""

from __future__ import annotations

from pathlib import Path


MODULES_DIR = Path(__file__).parent / "modules"


def load(name: str, **kwargs):
    """`evaluate.load` of one of hf_longssm's modules (`position_perplexity`, `passkey_retrieval`), no network."""
    import evaluate

    path = MODULES_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in MODULES_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"No hf_longssm evaluate module {name!r}; available: {available}.")
    return evaluate.load(str(path), **kwargs)


def resolve_model(model=None, model_id: str | None = None, device: str | None = None, dtype=None):
    """A live `model`, or one loaded from a Hub id or local path (exactly one of the two)."""
    import torch
    from transformers import AutoModelForCausalLM

    if (model is None) == (model_id is None):
        raise ValueError("Pass exactly one of model= (a loaded model) or model_id= (a Hub id or local path).")
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype or torch.float32)
        if device is not None:
            model = model.to(device)
    return model.eval()


def resolve_tokenizer(tokenizer=None, model_id: str | None = None):
    """A tokenizer object, `"byte"`, or the tokenizer saved with `model_id`."""
    from ..tokenization import ByteTokenizer

    if tokenizer == "byte" or (
        tokenizer is None and model_id and (Path(model_id) / "hf_longssm_tokenizer.json").is_file()
    ):
        return ByteTokenizer()
    if tokenizer is None or isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer or model_id)
    return tokenizer
