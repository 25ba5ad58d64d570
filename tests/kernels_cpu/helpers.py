"""Switching between the kernel branch and the torch path inside a test (tests/kernels_cpu)."""

from __future__ import annotations

import os
from contextlib import contextmanager


FORCE = "HF_LONGSSM_FORCE_KERNELS"
DISABLE = "HF_LONGSSM_DISABLE_KERNELS"


@contextmanager
def kernel_branch(on: bool = True):
    """`on`: the kernel branch for CPU tensors (HF_LONGSSM_FORCE_KERNELS=1); off: the torch path
    (HF_LONGSSM_DISABLE_KERNELS=1)."""
    name = FORCE if on else DISABLE
    saved = {key: os.environ.pop(key, None) for key in (FORCE, DISABLE)}
    os.environ[name] = "1"
    try:
        yield
    finally:
        os.environ.pop(name, None)
        os.environ.update({key: value for key, value in saved.items() if value is not None})


def torch_path():
    return kernel_branch(False)


def relative_error(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| (float64), the scale-free comparison the tests use."""
    ours, theirs = ours.double(), theirs.double()
    return ((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12)).item()
