"""How a multi-token segment starts from a carried state and returns its final state, per architecture."""

from .forward import forward_with_state
from .kernels import kernel_availability, reference_scans
from .registry import SUPPORTED_ARCHITECTURES, get_architecture, prepare_model, state_shapes, unwrap_model


__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "forward_with_state",
    "get_architecture",
    "kernel_availability",
    "reference_scans",
    "prepare_model",
    "state_shapes",
    "unwrap_model",
]
