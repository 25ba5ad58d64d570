"""hf_longssm: make Hugging Face Mamba, Mamba-2 and FalconMamba models work far beyond their training context."""

import importlib


from .modeling import compat  # noqa: F401 (first: the transformers version check)  # isort: skip
from . import extend
from .forward import eval_mode, forward_with_state, iter_segments, prefill
from .loading import load_model
from .modeling import SUPPORTED_ARCHITECTURES, get_architecture, prepare_model, unwrap_model
from .state import CarriedState, FittedNoiseStats
from .training import DataCollatorForStatePassing, StatePassingConfig, StatePassingTrainer, data


__version__ = "0.1.0.dev0"


def __getattr__(name: str):
    """`hl.evaluate` (the package `hf_longssm.evaluate`, callable) is imported on first use: it loads the command
    layer (and lm-eval when installed), which `import hf_longssm` should not pay for or run."""
    if name == "evaluate":
        return importlib.import_module(".evaluate", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "data",
    "evaluate",
    "extend",
    "SUPPORTED_ARCHITECTURES",
    "CarriedState",
    "DataCollatorForStatePassing",
    "StatePassingConfig",
    "StatePassingTrainer",
    "FittedNoiseStats",
    "eval_mode",
    "forward_with_state",
    "get_architecture",
    "iter_segments",
    "load_model",
    "prefill",
    "prepare_model",
    "unwrap_model",
]
