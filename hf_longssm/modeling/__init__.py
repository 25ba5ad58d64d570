"""How a multi-token segment starts from a carried state and returns its final state, per model family.

Imports nothing else of hf_longssm: `compat` (first: it checks the installed transformers before any module reads
transformers' Mamba internals) -> `ops/` (kernel-free maths) -> `kernels.py` (dispatch) -> one file per family
(`mamba.py`, `falcon_mamba.py`, `mamba2.py`) -> `registry.py` (collects the families).
"""

from . import compat  # noqa: F401 (first: the version check)  # isort: skip
from .base import Architecture, SegmentStates, StatefulMixerMixin, StateKind
from .kernels import kernel_availability, reference_scans
from .ops import selective_scan
from .registry import (
    SUPPORTED_ARCHITECTURES,
    attention_layers,
    cache_argument,
    cache_kept_under_checkpointing,
    get_architecture,
    input_device,
    kv_shape,
    layer_kinds,
    prepare_model,
    register_model_code,
    ssm_layers,
    state_kinds,
    state_shapes,
    unwrap_model,
    window_state_names,
)


__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "Architecture",
    "attention_layers",
    "SegmentStates",
    "StateKind",
    "StatefulMixerMixin",
    "cache_argument",
    "cache_kept_under_checkpointing",
    "get_architecture",
    "input_device",
    "kv_shape",
    "layer_kinds",
    "kernel_availability",
    "reference_scans",
    "selective_scan",
    "prepare_model",
    "register_model_code",
    "ssm_layers",
    "state_kinds",
    "state_shapes",
    "unwrap_model",
    "window_state_names",
]
