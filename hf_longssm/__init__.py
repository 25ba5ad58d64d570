"""hf_longssm: make Hugging Face Mamba, Mamba-2 and FalconMamba models work far beyond their training context."""

from . import data
from .collator import DataCollatorForStatePassing
from .config import StatePassingConfig
from .modeling import SUPPORTED_ARCHITECTURES, forward_with_state, get_architecture, prepare_model, unwrap_model
from .state import CarriedState, FittedNoiseStats
from .trainer import StatePassingTrainer


__version__ = "0.1.0.dev0"

__all__ = [
    "data",
    "SUPPORTED_ARCHITECTURES",
    "CarriedState",
    "DataCollatorForStatePassing",
    "StatePassingConfig",
    "StatePassingTrainer",
    "FittedNoiseStats",
    "forward_with_state",
    "get_architecture",
    "prepare_model",
    "unwrap_model",
]
