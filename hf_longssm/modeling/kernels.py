"""The dispatch between mamba-ssm / causal-conv1d kernels and the torch path of `hf_longssm.modeling.ops`.

mamba-ssm and causal-conv1d load their CUDA extensions when imported, so they are imported on first need (a missing
or broken build must not break `import hf_longssm`). The torch path is exact and always available; the kernel path is
chosen per call when the kernels import *and* the tensors live on a CUDA device. Which path runs is logged once.
`reference_scans()` switches every scan to its step-by-step reference (tests, debugging).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from types import SimpleNamespace

import torch
from transformers.utils import logging

from .ops import (
    causal_conv1d_ref,
    check_conv_activation,
    discretize,
    next_conv_state,
    selective_scan_chunked,
    selective_scan_from_zero_with_correction,
    selective_scan_ref,
    ssd_chunk_scan,
    ssd_scan_ref,
)


logger = logging.get_logger(__name__)

# Set HF_LONGSSM_DISABLE_KERNELS=1 to force the torch path everywhere (used by the GPU tests to compare both).
_DISABLE_ENV = "HF_LONGSSM_DISABLE_KERNELS"


@functools.cache
def _import_mamba_ssm() -> SimpleNamespace | None:
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as err:  # a broken build must not break the import of hf_longssm
        logger.warning(f"mamba_ssm is installed but failed to import ({err}); using the torch path.")
        return None
    return SimpleNamespace(selective_scan_fn=selective_scan_fn, mamba_chunk_scan_combined=mamba_chunk_scan_combined)


@functools.cache
def _import_causal_conv1d() -> SimpleNamespace | None:
    if importlib.util.find_spec("causal_conv1d") is None:
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as err:
        logger.warning(f"causal_conv1d is installed but failed to import ({err}); using the torch conv.")
        return None
    return SimpleNamespace(causal_conv1d_fn=causal_conv1d_fn)


def _kernels_allowed(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and os.environ.get(_DISABLE_ENV, "0") not in ("1", "true", "TRUE")


def mamba_ssm_ops(tensor: torch.Tensor) -> SimpleNamespace | None:
    """The mamba-ssm functions to use for `tensor`, or `None` for the torch path."""
    return _import_mamba_ssm() if _kernels_allowed(tensor) else None


def causal_conv1d_ops(tensor: torch.Tensor) -> SimpleNamespace | None:
    """The causal-conv1d functions to use for `tensor`, or `None` for the torch conv."""
    return _import_causal_conv1d() if _kernels_allowed(tensor) else None


_reference_mode = False


@contextlib.contextmanager
def reference_scans():
    """Run every scan through its step-by-step reference (tests and debugging): slow, but obviously right."""
    global _reference_mode
    previous, _reference_mode = _reference_mode, True
    try:
        yield
    finally:
        _reference_mode = previous


def use_reference() -> bool:
    return _reference_mode


_reported: set[str] = set()


def report_path(component: str, path: str, tensor: torch.Tensor | None = None) -> None:
    """Log once per process which implementation serves `component` (no silent fall-back).

    A CUDA tensor on the torch path means the kernels are missing (or disabled): that is a warning, with what to
    install; on the CPU the torch path is the only one and is logged at info level.
    """
    key = f"{component}:{path}"
    if key in _reported:
        return
    _reported.add(key)
    if tensor is not None and tensor.is_cuda and path.endswith("torch"):
        logger.warning(
            f"hf_longssm: {component} runs on the {path} path on CUDA (exact, slower): install the kernels with "
            "`pip install --no-build-isolation mamba-ssm causal-conv1d` (README, GPU machines) unless "
            f"{_DISABLE_ENV}=1 is set on purpose."
        )
    else:
        logger.info(f"hf_longssm: {component} runs on the {path} path.")


def kernel_availability() -> dict[str, bool]:
    """Whether mamba-ssm and causal-conv1d import here (without touching CUDA tensors)."""
    return {"mamba_ssm": _import_mamba_ssm() is not None, "causal_conv1d": _import_causal_conv1d() is not None}


# ----- the three state-carrying operations ----------------------------------------------------------------------
def causal_conv1d_with_state(
    hidden_states: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_conv1d_ref`'s contract, served by causal-conv1d's `causal_conv1d_fn` on CUDA when available."""
    ops = causal_conv1d_ops(hidden_states)
    if ops is None:
        report_path("causal conv1d", "torch", hidden_states)
        return causal_conv1d_ref(hidden_states, conv_state, weight, bias, activation)
    check_conv_activation(activation)
    report_path("causal conv1d", "causal-conv1d kernel")
    weight = weight.reshape(weight.shape[0], -1)
    new_conv_state = next_conv_state(hidden_states, conv_state, weight.shape[-1])
    # causal_conv1d_fn takes initial states only in channel-last layout (stride 1 along channels).
    x = hidden_states.transpose(1, 2).contiguous().transpose(1, 2)
    initial_states = conv_state[..., 1:].to(hidden_states.dtype).transpose(1, 2).contiguous().transpose(1, 2)
    out = ops.causal_conv1d_fn(
        x, weight, bias, initial_states=initial_states, activation="silu" if activation else None
    )
    return out, new_conv_state


def selective_scan_with_state(u, delta, A, B, C, D, z, delta_bias, initial_state) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 scan from `initial_state` (softplus on `delta + delta_bias`): mamba-ssm's CUDA scan plus the exact
    correction on CUDA when available, the chunked torch scan otherwise (layouts of `selective_scan_ref`)."""
    if use_reference():
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, initial_state)
    ops = mamba_ssm_ops(u)
    if ops is not None:
        report_path("Mamba-1 selective scan", "mamba-ssm selective_scan_fn + initial-state correction")
        return selective_scan_from_zero_with_correction(
            ops.selective_scan_fn,
            u.contiguous(),
            delta.contiguous(),
            A,
            B.contiguous(),
            C.contiguous(),
            D,
            z,
            delta_bias,
            True,
            initial_state,
        )
    report_path("Mamba-1 selective scan", "chunked torch", u)
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, True, initial_state)


def ssd_scan_with_state(
    x, dt, A, B, C, *, chunk_size, D, dt_bias, dt_limit, initial_states
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 scan from `initial_states` (softplus on `dt + dt_bias`, clamped to `dt_limit`): mamba-ssm's
    `mamba_chunk_scan_combined` on CUDA when available, `ssd_chunk_scan` otherwise (layouts of `ssd_scan_ref`)."""
    ops = mamba_ssm_ops(x)
    if use_reference():
        return ssd_scan_ref(x, discretize(dt, dt_bias, True, dt_limit), A, B, C, D=D, initial_states=initial_states)
    if ops is not None:
        report_path("Mamba-2 chunk scan", "mamba-ssm mamba_chunk_scan_combined")
        return ops.mamba_chunk_scan_combined(
            x,
            dt,
            A,
            B,
            C,
            chunk_size=chunk_size,
            D=D,
            z=None,
            dt_bias=dt_bias,
            initial_states=initial_states.float(),
            dt_softplus=True,
            dt_limit=tuple(dt_limit),
            return_final_states=True,
        )
    report_path("Mamba-2 chunk scan", "chunked torch", x)
    dt = discretize(dt, dt_bias, True, dt_limit)
    return ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_states)
