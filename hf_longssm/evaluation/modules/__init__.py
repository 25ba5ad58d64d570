"""The `evaluate` modules shipped with hf_longssm, one folder each (`<name>/<name>.py` and a README card).

The scripts are thin wrappers over `hf_longssm.evaluation`; they import `hf_longssm` absolutely because `evaluate`
copies a script elsewhere before importing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


MODULES_DIR = Path(__file__).parent


def available_modules() -> list[str]:
    """The names of the shipped modules, sorted."""
    return sorted(p.name for p in MODULES_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def load(name: str, **kwargs: Any):
    """`evaluate.load` of one of hf_longssm's modules (`position_perplexity`, `passkey_retrieval`), no network.

    Args:
        name (`str`): the module's name.
        **kwargs: passed to `evaluate.load`.
    """
    import evaluate

    path = MODULES_DIR / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"No hf_longssm evaluate module {name!r}; available: {available_modules()}.")
    return evaluate.load(str(path), **kwargs)
