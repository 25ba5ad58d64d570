"""Long-context measurements, every one over long inputs in segments with a carried state (bounded memory)."""

from .babilong import babilong_accuracy
from .copying import copying_accuracy
from .modules import load
from .passkey import build_passkey_prompt, passkey_retrieval
from .perplexity import PositionPerplexity, log_buckets, position_perplexity, restarted_position_nll
from .remembrance import effective_remembrance, state_norms_by_position


__all__ = [
    "PositionPerplexity",
    "babilong_accuracy",
    "copying_accuracy",
    "build_passkey_prompt",
    "effective_remembrance",
    "load",
    "log_buckets",
    "passkey_retrieval",
    "position_perplexity",
    "restarted_position_nll",
    "state_norms_by_position",
]
