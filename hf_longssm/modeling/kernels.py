"""Which CUDA kernels are importable, decided once per process.

mamba-ssm and causal-conv1d load their CUDA extensions when imported, so they are imported lazily here and only
when a CUDA tensor asks for them. The torch path is exact and always available; the kernel path is chosen per call
when the kernels import *and* the tensors live on a CUDA device. Which path runs is logged once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from types import SimpleNamespace

import torch
from transformers.utils import logging


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
