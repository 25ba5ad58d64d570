"""CPU stand-in for causal-conv1d's compiled `causal_conv1d_cuda` extension (tests only, never installed).

`tests/kernels_cpu/conftest.py` puts this folder first on `sys.path`, so causal-conv1d's real Python wrapper
(`causal_conv1d.causal_conv1d_interface.CausalConv1dFn` through the `torch.library` ops of `cpp_functions.py`) runs
end to end on CPU tensors. The maths is causal-conv1d's own torch reference (`causal_conv1d_ref`); the backward
differentiates it (`torch.func.vjp`). Like the C++ functions, results are written into the `out`,
`final_states_out`, `dx`, `dweight`, `dbias`, `dinitial_states` tensors the wrapper allocates. Every `TORCH_CHECK`
of Dao-AILab/causal-conv1d `csrc/causal_conv1d.cpp` (`causal_conv1d_fwd`, `causal_conv1d_bwd`; causal-conv1d
1.6-1.7) is mirrored with the same message, except `is_cuda()`: these tensors live on the CPU by design.

`CALLS` counts the calls so that a test can assert that the kernel branch really ran.
"""

from __future__ import annotations

from collections import Counter

import torch


CALLS: Counter = Counter()

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check(condition: bool, message: str) -> None:
    if not condition:  # TORCH_CHECK raises c10::Error, which Python sees as RuntimeError
        raise RuntimeError(message)


def _check_shape(tensor: torch.Tensor, name: str, *shape: int) -> None:
    _check(tuple(tensor.shape) == shape, f"{name} must have shape {shape}")  # CHECK_SHAPE


def _check_common(x, weight, bias, seq_idx, initial_states) -> bool:
    """The checks `causal_conv1d_fwd` and `causal_conv1d_bwd` share; returns `is_channel_last`."""
    _check(x.dtype in _FLOATS, "x: input type must be float, half or bf16")
    _check(weight.dtype in _FLOATS, "weight: weight type must be float, half or bf16")
    batch, dim, seqlen = x.shape
    width = weight.shape[-1]
    _check_shape(x, "x", batch, dim, seqlen)
    _check_shape(weight, "weight", dim, width)
    _check(x.stride(2) == 1 or x.stride(1) == 1, "x.stride(2) == 1 || x.stride(1) == 1")
    is_channel_last = x.stride(1) == 1 and x.stride(2) > 1
    if is_channel_last:
        _check(dim % 8 == 0, "causal_conv1d only supports channel dimension divisible by 8 for now")
        _check(
            x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0,
            "causal_conv1d with channel last layout requires strides (x.stride(0) and x.stride(2)) to be "
            "multiples of 8",
        )
    _check(2 <= width <= 4, "causal_conv1d only supports width between 2 and 4")
    if bias is not None:
        _check(bias.dtype == weight.dtype, "bias.scalar_type() == weight_type")
        _check(bias.stride(-1) == 1, "bias.stride(-1) == 1")
        _check_shape(bias, "bias", dim)
    if seq_idx is not None:
        _check(is_channel_last, "seq_idx is only supported for channel last layout")
        raise NotImplementedError("stand-in: seq_idx is not mirrored (hf_longssm never passes it)")
    if initial_states is not None:
        _check(is_channel_last, "initial_states is only supported for channel last layout")
        _check(initial_states.dtype == x.dtype, "initial_states.scalar_type() == input_type")
        _check_shape(initial_states, "initial_states", batch, dim, width - 1)
        _check(initial_states.stride(1) == 1, "initial_states.stride(1) == 1")
    return is_channel_last


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


def _reference(x, weight, bias, initial_states, silu_activation):
    # Imported here, not at the top: causal_conv1d imports this module while it is being imported.
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref

    return causal_conv1d_ref(x, weight, bias, initial_states, activation="silu" if silu_activation else None)


def causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation):
    CALLS["causal_conv1d_fwd"] += 1
    is_channel_last = _check_common(x, weight, bias, seq_idx, initial_states)
    if final_states_out is not None:
        width = weight.shape[-1]
        _check(is_channel_last, "final_states is only supported for channel last layout")
        _check(final_states_out.dtype == x.dtype, "final_states.scalar_type() == input_type")
        _check_shape(final_states_out, "final_states", x.shape[0], x.shape[1], width - 1)
        _check(final_states_out.stride(1) == 1, "final_states.stride(1) == 1")
    with torch.no_grad():
        out.copy_(_reference(x, weight, bias, initial_states, silu_activation))
        if final_states_out is not None:
            width = weight.shape[-1]
            window = x if initial_states is None else torch.cat([initial_states, x], dim=-1)
            window = torch.nn.functional.pad(window, (width - 1 - window.shape[-1], 0))[..., -(width - 1) :]
            final_states_out.copy_(window)


def causal_conv1d_bwd(
    x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias, dinitial_states, silu_activation
):
    CALLS["causal_conv1d_bwd"] += 1
    _check(x.dtype in _FLOATS and weight.dtype in _FLOATS, "input and weight types must be float, half or bf16")
    _check((bias is None) == (dbias is None), "bias_.has_value() == dbias_.has_value()")
    batch, dim, seqlen = x.shape
    width = weight.shape[-1]
    # causal_conv1d_bwd checks the width before the shapes and the layout.
    _check(2 <= width <= 4, "causal_conv1d only supports width between 2 and 4")
    _check_shape(dout, "dout", batch, dim, seqlen)
    is_channel_last = x.stride(1) == 1 and x.stride(2) > 1
    # The C++ re-lays `dout` out like `x` before its checks (these copies keep the strides of size-1 dimensions).
    if not is_channel_last and dout.stride(2) != 1:
        dout = dout.contiguous()
    if is_channel_last and dout.stride(1) != 1:
        dout = dout.transpose(-1, -2).contiguous().transpose(-1, -2)
    if is_channel_last:
        _check(
            dout.stride(2) % 8 == 0 and dout.stride(0) % 8 == 0,
            "causal_conv1d with channel last layout requires strides (dout.stride(0) and dout.stride(2)) to be "
            "multiples of 8",
        )
    _check_common(x, weight, bias, seq_idx, initial_states)
    _check(dx.dtype == x.dtype, "dx.scalar_type() == input_type")
    _check_shape(dx, "dx", batch, dim, seqlen)
    _check(dx.stride(1) == 1 if is_channel_last else dx.stride(2) == 1, "dx layout must match x")
    if dfinal_states is not None:
        _check(is_channel_last, "dfinal_states is only supported for channel last layout")
        raise NotImplementedError("stand-in: dfinal_states is not mirrored (hf_longssm computes the window in torch)")
    if dinitial_states is not None:
        _check(dinitial_states.stride(1) == 1, "dinitial_states.stride(1) == 1")
    gx, gweight, gbias, ginit = _vjp(
        lambda *t: _reference(*t, silu_activation), (x, weight, bias, initial_states), dout
    )
    dx.copy_(gx)
    dweight.add_(gweight.to(dweight.dtype))  # the wrapper passes zeros; the kernel accumulates
    if dbias is not None:
        dbias.add_(gbias.to(dbias.dtype))
    if dinitial_states is not None:
        dinitial_states.copy_(ginit)


def causal_conv1d_update(x, conv_state, weight, bias, out, silu_activation, cache_seqlens, conv_state_indices):
    CALLS["causal_conv1d_update"] += 1
    raise NotImplementedError(
        "stand-in: causal_conv1d_update (one-token decoding) is not used by hf_longssm's kernels"
    )
