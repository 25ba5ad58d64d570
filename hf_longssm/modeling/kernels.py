"""The dispatch between mamba-ssm / causal-conv1d kernels and the torch path of `hf_longssm.modeling.ops`.

mamba-ssm and causal-conv1d load their compiled extensions when imported, so each kernel function is imported on first
need, on its own (a missing or broken build must not break `import hf_longssm`, and must disable only what it
serves): `selective_scan_fn` (Mamba-1; the CUDA extension `selective_scan_cuda`, which mamba-ssm after 2.3.2 builds
only with `MAMBA_KEEP_CUDA_BUILD=TRUE` and otherwise leaves as `None`), `mamba_chunk_scan_combined` (Mamba-2; Triton)
and `causal_conv1d_fn` (the CUDA extension `causal_conv1d_cuda`). The torch path is exact and always available; a
kernel runs when it imports *and* the tensors live on a CUDA device. Which path runs is logged once.

* `HF_LONGSSM_DISABLE_KERNELS=1`: the torch path everywhere (the GPU tests compare both).
* `HF_LONGSSM_FORCE_KERNELS=1`: the kernel branch for CPU tensors too, and an error instead of the torch path when a
  kernel is missing (tests: `tests/kernels_cpu/` runs the real wrappers on CPU stand-ins of the extensions and
  Triton's interpreter). Shapes a kernel refuses still take the torch path (`causal_conv1d_with_state`).
* `reference_scans()` switches every scan to its step-by-step reference (tests, debugging).

Nothing here reads a tensor value back to the host: the per-segment path queues work and returns.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable

import torch
from transformers.utils import logging

from .ops import (
    causal_conv1d_ref,
    check_conv_activation,
    discretize,
    dplr_chunked,
    dplr_ref,
    gated_delta_rule_chunked,
    gated_delta_rule_ref,
    gla_chunked,
    gla_ref,
    next_conv_state,
    rwkv6_chunked,
    rwkv6_ref,
    selective_scan_chunked,
    selective_scan_from_zero_with_correction,
    selective_scan_ref,
    ssd_chunk_scan,
    ssd_scan_ref,
)
from .ops.kernel_correction import attach_final_state_gradient


logger = logging.get_logger(__name__)

# Set HF_LONGSSM_DISABLE_KERNELS=1 to force the torch path everywhere (used by the GPU tests to compare both).
_DISABLE_ENV = "HF_LONGSSM_DISABLE_KERNELS"
# Set HF_LONGSSM_FORCE_KERNELS=1 to take the kernel branch for CPU tensors too (tests/kernels_cpu).
_FORCE_ENV = "HF_LONGSSM_FORCE_KERNELS"
_TRUE = ("1", "true", "TRUE", "True")


# ----- the kernels, imported one function at a time ---------------------------------------------------------------
@functools.cache
def _import_selective_scan_fn() -> tuple[Callable | None, str]:
    if importlib.util.find_spec("mamba_ssm") is None:
        return None, "mamba-ssm is not installed"
    try:
        from mamba_ssm.ops import selective_scan_interface
    except Exception as err:  # a broken build must not break the import of hf_longssm
        return None, f"mamba_ssm failed to import ({err})"
    # mamba-ssm 2.3.2 imports `selective_scan_cuda` or fails (above); later versions build it only with
    # MAMBA_KEEP_CUDA_BUILD=TRUE, import without it and raise on the first call.
    if getattr(selective_scan_interface, "selective_scan_cuda", None) is None:
        return None, (
            "mamba-ssm was built without its CUDA selective scan (reinstall with MAMBA_KEEP_CUDA_BUILD=TRUE "
            "MAMBA_FORCE_BUILD=TRUE)"
        )
    return selective_scan_interface.selective_scan_fn, ""


@functools.cache
def _import_mamba_chunk_scan_combined() -> tuple[Callable | None, str]:
    if importlib.util.find_spec("mamba_ssm") is None:
        return None, "mamba-ssm is not installed"
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as err:
        return None, f"mamba_ssm's Triton chunk scan failed to import ({err})"
    return mamba_chunk_scan_combined, ""


@functools.cache
def _import_causal_conv1d_fn() -> tuple[Callable | None, str]:
    if importlib.util.find_spec("causal_conv1d") is None:
        return None, "causal-conv1d is not installed"
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as err:
        return None, f"causal_conv1d failed to import ({err})"
    return causal_conv1d_fn, ""


@functools.cache
def _import_chunk_gated_delta_rule() -> tuple[Callable | None, str]:
    if importlib.util.find_spec("fla") is None:
        return None, "flash-linear-attention is not installed"
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as err:
        return None, f"fla's chunk_gated_delta_rule failed to import ({err})"
    return chunk_gated_delta_rule, ""


@functools.cache
def _import_chunk_gla() -> tuple[Callable | None, str]:
    if importlib.util.find_spec("fla") is None:
        return None, "flash-linear-attention is not installed"
    try:
        from fla.ops.gla import chunk_gla
    except Exception as err:
        return None, f"fla's chunk_gla failed to import ({err})"
    return chunk_gla, ""


@functools.cache
def _import_chunk_dplr_delta_rule() -> tuple[Callable | None, str]:
    if importlib.util.find_spec("fla") is None:
        return None, "flash-linear-attention is not installed"
    try:
        from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule
    except Exception as err:
        return None, f"fla's chunk_dplr_delta_rule failed to import ({err})"
    return chunk_dplr_delta_rule, ""


@functools.cache
def _import_chunk_rwkv6() -> tuple[Callable | None, str]:
    if importlib.util.find_spec("fla") is None:
        return None, "flash-linear-attention is not installed"
    try:
        from fla.ops.rwkv6 import chunk_rwkv6
    except Exception as err:
        return None, f"fla's chunk_rwkv6 failed to import ({err})"
    return chunk_rwkv6, ""


_KERNEL_IMPORTS: dict[str, Callable[[], tuple[Callable | None, str]]] = {
    "selective_scan_fn": _import_selective_scan_fn,
    "mamba_chunk_scan_combined": _import_mamba_chunk_scan_combined,
    "causal_conv1d_fn": _import_causal_conv1d_fn,
    "chunk_gated_delta_rule": _import_chunk_gated_delta_rule,
    "chunk_gla": _import_chunk_gla,
    "chunk_dplr_delta_rule": _import_chunk_dplr_delta_rule,
    "chunk_rwkv6": _import_chunk_rwkv6,
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") in _TRUE


def _kernels_allowed(tensor: torch.Tensor) -> bool:
    disable, force = _flag(_DISABLE_ENV), _flag(_FORCE_ENV)
    if disable and force:
        raise ValueError(f"Both {_DISABLE_ENV}=1 and {_FORCE_ENV}=1 are set: unset one of them.")
    return not disable and (force or tensor.is_cuda)


def kernels_allowed(tensor: torch.Tensor) -> bool:
    """Whether `tensor` takes the kernel branch: on CUDA, or forced (HF_LONGSSM_FORCE_KERNELS=1), unless disabled."""
    return _kernels_allowed(tensor)


@functools.cache
def _report_missing(name: str, reason: str) -> None:
    """Once per kernel function: why it cannot serve (a warning when its package is installed but broken)."""
    installed = not reason.endswith("is not installed")
    (logger.warning if installed else logger.info)(f"hf_longssm: {name} is unavailable: {reason}.")


def kernel(name: str, tensor: torch.Tensor) -> Callable | None:
    """The kernel function `name` to use for `tensor`, or `None` for the torch path.

    With HF_LONGSSM_FORCE_KERNELS=1 a missing kernel is an error, not the torch path.
    """
    if not _kernels_allowed(tensor):
        return None
    fn, reason = _KERNEL_IMPORTS[name]()
    if fn is None:
        if _flag(_FORCE_ENV):
            raise RuntimeError(f"{_FORCE_ENV}=1 but the kernel {name} is unavailable: {reason}.")
        _report_missing(name, reason)
    return fn


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
    """Whether each kernel function imports here (without touching CUDA tensors), by function name:
    `selective_scan_fn` (Mamba-1), `mamba_chunk_scan_combined` (Mamba-2), `causal_conv1d_fn` (the conv of all
    families), `chunk_gated_delta_rule` (Gated DeltaNet, fla), `chunk_gla` (GLA, fla), `chunk_dplr_delta_rule`
    (RWKV-7, fla), `chunk_rwkv6` (RWKV-6, fla). Each is imported on its own, so one missing build disables only
    what it serves."""
    return {name: load()[0] is not None for name, load in _KERNEL_IMPORTS.items()}


# ----- the three state-carrying operations ----------------------------------------------------------------------
def _conv_kernel_refusal(dim: int, width: int) -> str | None:
    """Why `causal_conv1d_fn` would refuse this conv in the channel-last layout it needs for a carried window, or
    None. Dao-AILab/causal-conv1d csrc/causal_conv1d.cpp, `causal_conv1d_fwd` and `causal_conv1d_bwd`:
    `TORCH_CHECK(width >= 2 && width <= 4, ...)` and, channel-last, `TORCH_CHECK(dim % 8 == 0, ...)`."""
    if not 2 <= width <= 4:
        return f"conv width {width} (causal_conv1d_fn takes 2 to 4)"
    if dim % 8:
        return f"{dim} channels (causal_conv1d_fn's channel-last layout needs a multiple of 8)"
    return None


@functools.cache
def _report_conv_refusal(refusal: str, on_cuda: bool) -> None:
    message = f"hf_longssm: causal_conv1d_fn does not take {refusal}; that conv runs on the torch path"
    (logger.warning if on_cuda else logger.info)(message + (" (exact, slower)." if on_cuda else "."))


def _channel_last(tensor: torch.Tensor) -> torch.Tensor:
    """`(b, d, l)` values laid out as a contiguous `(b, l, d)`: strides `(l * d, 1, d)` whatever the sizes.

    causal_conv1d.cpp needs, channel-last, `x.stride(0)` and `x.stride(2)` multiples of 8 (and `dout`'s in the
    backward). `.transpose(1, 2).contiguous()` is not enough: a tensor whose only non-unit dimension is dense counts as
    contiguous, so a batch-1, one-token segment keeps the strides of the projection it was sliced from.
    """
    batch, dim, seq_len = tensor.shape
    return tensor.new_empty(batch, seq_len, dim).copy_(tensor.transpose(1, 2)).transpose(1, 2)


def _is_kernel_channel_last(tensor: torch.Tensor) -> bool:
    return tensor.stride(1) == 1 and tensor.stride(2) > 1 and tensor.stride(0) % 8 == 0 and tensor.stride(2) % 8 == 0


def _channel_last_gradient(grad: torch.Tensor) -> torch.Tensor:
    # causal_conv1d_bwd re-lays `dout` out only when `dout.stride(1) != 1`; a one-token `dout` with stride (d, 1, 1)
    # passes that test and then fails `dout.stride(2) % 8 == 0`.
    return grad if _is_kernel_channel_last(grad) else _channel_last(grad)


def causal_conv1d_with_state(
    hidden_states: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_conv1d_ref`'s contract, served by causal-conv1d's `causal_conv1d_fn` on CUDA when available and the
    shape is one it takes (width 2 to 4, channels a multiple of 8); the torch conv otherwise."""
    causal_conv1d_fn = kernel("causal_conv1d_fn", hidden_states)
    if causal_conv1d_fn is None:
        report_path("causal conv1d", "torch", hidden_states)
        return causal_conv1d_ref(hidden_states, conv_state, weight, bias, activation)
    weight = weight.reshape(weight.shape[0], -1)
    refusal = _conv_kernel_refusal(hidden_states.shape[1], weight.shape[-1])
    if refusal is not None:
        _report_conv_refusal(refusal, hidden_states.is_cuda)
        return causal_conv1d_ref(hidden_states, conv_state, weight, bias, activation)
    check_conv_activation(activation)
    report_path("causal conv1d", "causal-conv1d kernel")
    new_conv_state = next_conv_state(hidden_states, conv_state, weight.shape[-1])
    # A carried window (`initial_states`) is taken only in the channel-last layout (causal_conv1d.cpp:
    # "initial_states is only supported for channel last layout", `initial_states.stride(1) == 1`).
    x = _channel_last(hidden_states)
    initial_states = _channel_last(conv_state[..., 1:].to(hidden_states.dtype))
    out = causal_conv1d_fn(x, weight, bias, initial_states=initial_states, activation="silu" if activation else None)
    if out.requires_grad:
        out.register_hook(_channel_last_gradient)
    return out, new_conv_state


def _zero_start_scan_with_final_state_gradient(
    selective_scan_fn, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
):
    """mamba-ssm's `selective_scan_fn` with the gradient of its last state, which its backward drops
    (`ops.kernel_correction`)."""
    y, last_state = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
    return y, attach_final_state_gradient(last_state, u, delta, A, B, delta_bias, delta_softplus)


def selective_scan_with_state(
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 scan from `initial_state` (softplus on `delta + delta_bias` unless `delta_softplus=False`: a Δ already
    discretized): mamba-ssm's CUDA scan plus the exact correction on CUDA when available, the chunked torch scan
    otherwise (layouts of `selective_scan_ref`)."""
    if use_reference():
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    selective_scan_fn = kernel("selective_scan_fn", u)
    if selective_scan_fn is not None:
        report_path("Mamba-1 selective scan", "mamba-ssm selective_scan_fn + initial-state correction")
        return selective_scan_from_zero_with_correction(
            functools.partial(_zero_start_scan_with_final_state_gradient, selective_scan_fn),
            u.contiguous(),
            # selective_scan.cpp takes delta in u's dtype; a Δ discretized outside (a length extension) is float32.
            delta.to(u.dtype).contiguous(),
            A,
            B.contiguous(),
            C.contiguous(),
            D,
            z,
            delta_bias,
            delta_softplus,
            initial_state,
        )
    report_path("Mamba-1 selective scan", "chunked torch", u)
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def ssd_scan_with_state(
    x, dt, A, B, C, *, chunk_size, D, dt_bias, dt_limit, initial_states, dt_softplus: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 scan from `initial_states` (softplus on `dt + dt_bias` unless `dt_softplus=False`, clamped to
    `dt_limit`): mamba-ssm's `mamba_chunk_scan_combined` on CUDA when available, `ssd_chunk_scan` otherwise (layouts
    of `ssd_scan_ref`)."""
    if use_reference():
        dt = discretize(dt, dt_bias, dt_softplus, dt_limit)
        return ssd_scan_ref(x, dt, A, B, C, D=D, initial_states=initial_states)
    mamba_chunk_scan_combined = kernel("mamba_chunk_scan_combined", x)
    if mamba_chunk_scan_combined is not None:
        _check_triton_on_cpu(x)
        report_path("Mamba-2 chunk scan", "mamba-ssm mamba_chunk_scan_combined")
        return mamba_chunk_scan_combined(
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
            dt_softplus=dt_softplus,
            dt_limit=tuple(dt_limit),
            return_final_states=True,
        )
    report_path("Mamba-2 chunk scan", "chunked torch", x)
    dt = discretize(dt, dt_bias, dt_softplus, dt_limit)
    return ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_states)


def _check_triton_on_cpu(tensor: torch.Tensor) -> None:
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"{_FORCE_ENV}=1 runs Triton kernels on CPU tensors only through Triton's interpreter: set "
            "TRITON_INTERPRET=1 before the kernel's package is imported (tests/kernels_cpu/conftest.py)."
        )


def gated_delta_rule_with_state(q, k, v, g, beta, initial_state, chunk_size: int = 64):
    """Gated DeltaNet from `initial_state` (L2-normalized queries and keys): fla's `chunk_gated_delta_rule` on CUDA
    when installed, `gated_delta_rule_chunked` otherwise (layouts of `gated_delta_rule_ref`). Returns the output
    in float32 and the final state `(b, h, k, v)` in float32."""
    if use_reference():
        return gated_delta_rule_ref(q, k, v, g, beta, initial_state)
    chunk_gated_delta_rule = kernel("chunk_gated_delta_rule", q)
    if chunk_gated_delta_rule is not None:
        _check_triton_on_cpu(q)
        report_path("Gated DeltaNet", "fla chunk_gated_delta_rule")
        heads = v.shape[2]
        if q.shape[2] != heads:  # grouped keys: one per value head, as the torch path does
            q = q.repeat_interleave(heads // q.shape[2], dim=2)
            k = k.repeat_interleave(heads // k.shape[2], dim=2)
        o, final_state = chunk_gated_delta_rule(
            q, k, v, g.float(), beta, initial_state=initial_state.float(), output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )  # fmt: skip
        return o.float(), final_state.float()
    report_path("Gated DeltaNet", "chunked torch", q)
    return gated_delta_rule_chunked(q, k, v, g, beta, initial_state, chunk_size=chunk_size)


def gla_with_state(q, k, v, gk, initial_state, scale: float | None = None):
    """Gated linear attention from `initial_state`: fla's `chunk_gla` on CUDA when installed, `gla_chunked`
    otherwise (layouts of `gla_ref`: state `(b, h, k, v)`). Returns the output in float32 and the final state in
    float32."""
    if use_reference():
        return gla_ref(q, k, v, gk, initial_state, scale=scale)
    chunk_gla = kernel("chunk_gla", q)
    if chunk_gla is not None:
        _check_triton_on_cpu(q)
        report_path("GLA", "fla chunk_gla")
        o, final_state = chunk_gla(
            q, k, v, gk.float(), scale=scale, initial_state=initial_state.float(), output_final_state=True
        )
        return o.float(), final_state.float()
    report_path("GLA", "chunked torch", q)
    return gla_chunked(q, k, v, gk, initial_state, scale=scale)


def dplr_delta_rule_with_state(q, k, v, a, b, gk, initial_state, scale: float | None = None):
    """The DPLR delta rule (RWKV-7) from `initial_state`: fla's `chunk_dplr_delta_rule` on CUDA when installed,
    `dplr_chunked` otherwise (layouts of `dplr_ref`: state `(b, h, k, v)`). Returns the output in float32 and the
    final state in float32."""
    if use_reference():
        return dplr_ref(q, k, v, a, b, gk, initial_state, scale=scale)
    chunk_dplr_delta_rule = kernel("chunk_dplr_delta_rule", q)
    if chunk_dplr_delta_rule is not None:
        _check_triton_on_cpu(q)
        report_path("DPLR delta rule", "fla chunk_dplr_delta_rule")
        o, final_state = chunk_dplr_delta_rule(
            q, k, v, a, b, gk.float(), scale=scale, initial_state=initial_state.float(), output_final_state=True
        )
        return o.float(), final_state.float()
    report_path("DPLR delta rule", "chunked torch", q)
    return dplr_chunked(q, k, v, a, b, gk, initial_state, scale=scale)


def rwkv6_with_state(q, k, v, w, u, initial_state, scale: float | None = None):
    """RWKV-6 from `initial_state`: fla's `chunk_rwkv6` on CUDA when installed, `rwkv6_chunked` otherwise (layouts
    of `rwkv6_ref`: state `(b, h, k, v)`). Returns the output in float32 and the final state in float32."""
    if use_reference():
        return rwkv6_ref(q, k, v, w, u, initial_state, scale=scale)
    chunk_rwkv6 = kernel("chunk_rwkv6", q)
    if chunk_rwkv6 is not None:
        _check_triton_on_cpu(q)
        report_path("RWKV-6", "fla chunk_rwkv6")
        o, final_state = chunk_rwkv6(
            q, k, v, w.float(), u, scale=scale, initial_state=initial_state.float(), output_final_state=True
        )
        return o.float(), final_state.float()
    report_path("RWKV-6", "chunked torch", q)
    return rwkv6_chunked(q, k, v, w, u, initial_state, scale=scale)
