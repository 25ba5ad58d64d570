"""CPU stand-in for mamba-ssm's compiled `selective_scan_cuda` extension (tests only, never installed).

`tests/kernels_cpu/conftest.py` puts this folder first on `sys.path`, so mamba-ssm's real Python wrapper
(`mamba_ssm.ops.selective_scan_interface.SelectiveScanFn`) runs end to end on CPU tensors. The maths is mamba-ssm's own
torch reference (`selective_scan_ref`); the backward differentiates it (`torch.func.vjp`) and, like the CUDA kernel,
receives only the gradient of `out` (never that of the last state). Every `TORCH_CHECK` of
state-spaces/mamba `csrc/selective_scan/selective_scan.cpp` (`selective_scan_fwd`, `selective_scan_bwd`, mamba-ssm
2.3.2) is mirrored with the same message, except `is_cuda()`: these tensors live on the CPU by design.

`CALLS` counts the calls so that a test can assert that the kernel branch really ran.
"""

from __future__ import annotations

from collections import Counter

import torch


CALLS: Counter = Counter()

# selective_scan.cpp: `const int n_chunks = (seqlen + 2048 - 1) / 2048;` (the kernel's chunk of the sequence).
_KERNEL_CHUNK = 2048


def _check(condition: bool, message: str) -> None:
    if not condition:  # TORCH_CHECK raises c10::Error, which Python sees as RuntimeError
        raise RuntimeError(message)


def _check_shape(tensor: torch.Tensor, name: str, *shape: int) -> None:
    _check(tuple(tensor.shape) == shape, f"{name} must have shape {shape}")  # CHECK_SHAPE


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    """The checks `selective_scan_fwd` and `selective_scan_bwd` share (selective_scan.cpp)."""
    input_type, weight_type = u.dtype, A.dtype
    _check(input_type in (torch.float32, torch.float16, torch.bfloat16), "u: input type must be float, half or bf16")
    _check(weight_type in (torch.float32, torch.complex64), "A: weight type must be float or complex float")
    if weight_type == torch.complex64:
        raise NotImplementedError("stand-in: complex A is not mirrored (Mamba models use real A)")
    is_variable_B, is_variable_C = B.dim() >= 3, C.dim() >= 3
    _check(delta.dtype == input_type, "delta.scalar_type() == input_type")
    _check(B.dtype == (input_type if is_variable_B else weight_type), "B.scalar_type() mismatch")
    _check(C.dtype == (input_type if is_variable_C else weight_type), "C.scalar_type() mismatch")
    _check(u.stride(-1) == 1 or u.size(-1) == 1, "u.stride(-1) == 1 || u.size(-1) == 1")
    _check(delta.stride(-1) == 1 or delta.size(-1) == 1, "delta.stride(-1) == 1 || delta.size(-1) == 1")
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    _check(dstate <= 256, "selective_scan only supports state dimension <= 256")
    _check_shape(u, "u", batch, dim, seqlen)
    _check_shape(delta, "delta", batch, dim, seqlen)
    _check_shape(A, "A", dim, dstate)
    for name, t, variable in (("B", B, is_variable_B), ("C", C, is_variable_C)):
        if variable:
            _check(t.dim() == 4, f"{name}: the wrapper passes (batch, n_groups, dstate, seqlen)")
            _check_shape(t, name, batch, t.shape[1], dstate, seqlen)
            _check(t.stride(-1) == 1 or t.size(-1) == 1, f"{name}.stride(-1) == 1 || {name}.size(-1) == 1")
        else:
            _check_shape(t, name, dim, dstate)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _check(t.dtype == torch.float32, f"{name}.scalar_type() == at::ScalarType::Float")
            _check(t.stride(-1) == 1 or t.size(-1) == 1, f"{name}.stride(-1) == 1 || {name}.size(-1) == 1")
            _check_shape(t, name, dim)
    if z is not None:
        _check(z.dtype == input_type, "z.scalar_type() == input_type")
        _check(z.stride(-1) == 1 or z.size(-1) == 1, "z.stride(-1) == 1 || z.size(-1) == 1")
        _check_shape(z, "z", batch, dim, seqlen)


def _vjp(fn, tensors, cotangent):
    """Gradients of `fn(*tensors)` (None entries stay None) against `cotangent`. `torch.func.vjp`, not
    `torch.autograd.grad`: the C++ functions run inside `torch.library` custom ops, below autograd, where only the
    former still differentiates."""
    present = [t for t in tensors if t is not None]

    def of_present(*values):
        it = iter(values)
        return fn(*(next(it) if t is not None else None for t in tensors))

    _, pullback = torch.func.vjp(of_present, *present)
    grads = iter(pullback(cotangent))
    return [next(grads) if t is not None else None for t in tensors]


def _reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    # Imported here, not at the top: mamba_ssm's wrapper imports this module while mamba_ssm is being imported.
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _no_cu_seqlens(cu_seqlens) -> None:
    if cu_seqlens is not None:  # newer mamba-ssm passes it (varlen); hf_longssm never does
        raise NotImplementedError("stand-in: cu_seqlens (variable-length batches) is not mirrored")


def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cu_seqlens=None):
    """`selective_scan_fwd` -> `[out, x]` (+ `out_z` with `z`); `x (b, d, n_chunks, 2 * dstate)` holds, per kernel
    chunk of 2048 steps, the pair (cumulative decay, state) at the chunk's end: `x[:, :, -1, 1::2]` is the last state
    that `SelectiveScanFn` returns."""
    CALLS["selective_scan_fwd"] += 1
    _no_cu_seqlens(cu_seqlens)
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_chunks = (seqlen + _KERNEL_CHUNK - 1) // _KERNEL_CHUNK
    with torch.no_grad():
        out, _ = _reference(u, delta, A, B, C, D, None, delta_bias, delta_softplus, True)
        x = torch.empty(batch, dim, n_chunks, 2 * dstate, dtype=A.dtype, device=u.device)
        dt = delta.float() + (0 if delta_bias is None else delta_bias.float()[:, None])
        dt = torch.nn.functional.softplus(dt) if delta_softplus else dt
        for chunk in range(n_chunks):
            end = min((chunk + 1) * _KERNEL_CHUNK, seqlen)
            _, state = _reference(u[..., :end], delta[..., :end], A, B[..., :end], C[..., :end], None, None,
                                  delta_bias, delta_softplus, True)  # fmt: skip
            span = dt[..., chunk * _KERNEL_CHUNK : end].sum(-1)  # (b, d)
            x[:, :, chunk, 0::2] = torch.exp(span[..., None] * A.float())
            x[:, :, chunk, 1::2] = state
        out = out.to(delta.dtype)  # selective_scan.cpp: `out = torch::empty_like(delta)`
        if z is None:
            return [out, x]
        out_z = (out.float() * torch.nn.functional.silu(z.float())).to(z.dtype)
        return [out, x, out_z]


def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z, cu_seqlens=None):
    """`selective_scan_bwd` -> `[du, ddelta, dA, dB, dC, dD, ddelta_bias]` (+ `dz`, + `out_z`), from `dout` alone."""
    CALLS["selective_scan_bwd"] += 1
    _no_cu_seqlens(cu_seqlens)
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    input_type = u.dtype
    _check(dout.dtype == input_type, "dout.scalar_type() == input_type")
    _check(dout.stride(-1) == 1 or dout.size(-1) == 1, "dout.stride(-1) == 1 || dout.size(-1) == 1")
    batch, dim, seqlen = u.shape
    _check_shape(dout, "dout", batch, dim, seqlen)
    n_chunks = (seqlen + _KERNEL_CHUNK - 1) // _KERNEL_CHUNK
    if n_chunks > 1:
        _check(x is not None, "x_.has_value()")
    if x is not None:
        _check(x.dtype == A.dtype, "x.scalar_type() == weight_type")
        _check(x.is_contiguous(), "x.is_contiguous()")
        _check_shape(x, "x", batch, dim, n_chunks, 2 * A.shape[1])
    if z is not None:
        _check(out is not None, "out_.has_value()")
        _check(out.dtype == input_type, "out.scalar_type() == input_type")
        _check_shape(out, "out", batch, dim, seqlen)
    grads = _vjp(lambda *t: _reference(*t, delta_softplus, False), (u, delta, A, B, C, D, z, delta_bias), dout)
    du, ddelta, dA, dB, dC, dD, dz_value, ddelta_bias = grads
    # selective_scan.cpp: du, ddelta like u, delta; dA, dD, ddelta_bias float32; dB, dC returned `.to(B.dtype())`.
    result = [du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, ddelta_bias]
    if z is not None:
        if dz is not None:
            dz.copy_(dz_value)
            dz_value = dz
        result.append(dz_value)
        if recompute_out_z:
            result.append((out.float() * torch.nn.functional.silu(z.float())).to(out.dtype))
    return result
