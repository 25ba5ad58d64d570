"""Post-training with a carried or sampled initial state: documents -> streams -> segments -> trainer."""

from . import data
from .collator import DataCollatorForStatePassing
from .config import STATE_INITS, StatePassingConfig
from .trainer import StatePassingTrainer


__all__ = ["STATE_INITS", "DataCollatorForStatePassing", "StatePassingConfig", "StatePassingTrainer", "data"]
