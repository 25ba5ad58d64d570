"""hf_longssm: make Hugging Face Mamba, Mamba-2 and FalconMamba models work far beyond their training context."""

from . import evaluate, extend
from .forward import eval_mode, forward_with_state, iter_segments, prefill
from .loading import load_model
from .modeling import SUPPORTED_ARCHITECTURES, get_architecture, prepare_model, unwrap_model
from .state import CarriedState, FittedNoiseStats
from .training import DataCollatorForStatePassing, StatePassingConfig, StatePassingTrainer, data


__version__ = "0.1.0.dev0"

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
