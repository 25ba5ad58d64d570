"""The three state-carrying operations on the kernel branch (mamba-ssm / causal-conv1d's real wrappers over the CPU
stand-ins and Triton's interpreter) against the torch path, forward and backward, at edge shapes.

Run in the kernels environment: `python -m pytest -m kernels_cpu tests/kernels_cpu` (`.ci/run`).
"""

from __future__ import annotations

import pytest
import torch

from hf_longssm.modeling import kernels
from hf_longssm.modeling.ops import kernel_correction

from .helpers import kernel_branch, relative_error, torch_path


pytestmark = pytest.mark.kernels_cpu

# fp32 runs the same maths in another order; fp16 rounds the kernels' inputs and outputs (the interpreter's fp16 is
# exact; its bf16 matmuls are not, so bf16 is left to the GPU).
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-2}


def _grads(fn, inputs):
    for t in inputs:
        t.grad = None
    fn().backward()
    return [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in inputs]


# ----- Mamba-1: selective_scan_fn + initial-state correction + the final state's gradient --------------------------
def _mamba1_inputs(batch, dim, seq_len, dstate, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, dt=dtype):
        return (scale * torch.randn(*shape, generator=g)).to(dt).requires_grad_()

    return dict(
        u=randn(batch, dim, seq_len),
        delta=randn(batch, dim, seq_len, scale=0.5),
        A=(-torch.rand(dim, dstate, generator=g) * 2 - 0.05).requires_grad_(),
        B=randn(batch, dstate, seq_len),
        C=randn(batch, dstate, seq_len),
        D=randn(dim, dt=torch.float32),
        z=randn(batch, dim, seq_len),
        delta_bias=randn(dim, scale=0.3, dt=torch.float32),
        initial_state=randn(batch, dim, dstate, dt=torch.float32),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(("batch", "seq_len"), [(2, 37), (1, 1), (1, 300)], ids=["b2-L37", "b1-L1", "b1-L300"])
@pytest.mark.parametrize("loss_on", ["output+state", "state"])
def test_selective_scan_gradients_through_final_state(kernel_calls, batch, seq_len, dtype, loss_on):
    """Fault (a): `SelectiveScanFn.backward` drops the final state's gradient; the dispatch puts it back.

    L300 spans three chunks of the recomputation (128 steps each)."""
    inputs = _mamba1_inputs(batch, 16, seq_len, 4, dtype)
    order = list(inputs)
    weights_y = torch.randn(batch, 16, seq_len, generator=torch.Generator().manual_seed(1))
    weights_h = torch.randn(batch, 16, 4, generator=torch.Generator().manual_seed(2))

    def loss():
        y, final = kernels.selective_scan_with_state(*(inputs[k] for k in order))
        state_loss = (final * weights_h).sum()
        return state_loss + (y.float() * weights_y).sum() if loss_on == "output+state" else state_loss

    with kernel_branch():
        ours = _grads(loss, list(inputs.values()))
    with torch_path():
        ref = _grads(loss, list(inputs.values()))
    # The kernel's own backward runs only when the output is in the loss.
    assert kernel_calls()["selective_scan_fwd"] == 1
    assert kernel_calls().get("selective_scan_bwd", 0) == (1 if loss_on == "output+state" else 0)
    for name, a, b in zip(order, ours, ref):
        assert relative_error(a, b) < TOLERANCE[dtype], name


def test_selective_scan_detached_final_state_costs_nothing(kernel_calls, monkeypatch):
    """With the final state unused (TBTT, a detached carried state), the final-state gradient never runs."""
    calls = []
    original = kernel_correction._chunk_end_state
    monkeypatch.setattr(kernel_correction, "_chunk_end_state", lambda *a: calls.append(1) or original(*a))
    inputs = _mamba1_inputs(2, 16, 20, 4, torch.float32)
    with kernel_branch():
        y, final = kernels.selective_scan_with_state(*inputs.values())
        y.sum().backward()
    assert calls == [] and kernel_calls()["selective_scan_bwd"] == 1
    with kernel_branch(), torch.no_grad():
        _, final = kernels.selective_scan_with_state(*inputs.values())
    assert final.grad_fn is None


# ----- Mamba-2: mamba_chunk_scan_combined (Triton, interpreted) ---------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    ("batch", "seq_len", "chunk_size"),
    [(2, 37, 16), (1, 1, 8), (1, 13, 8)],
    ids=["b2-L37-c16", "b1-L1-c8", "b1-L13-c8"],
)
def test_ssd_scan_matches_torch_path(kernel_calls, batch, seq_len, chunk_size, dtype):
    """Outputs, final states and the gradients of both into x, dt, A, B, C, D, dt_bias and `initial_states`, for
    chunk sizes that do not divide the length."""
    g = torch.Generator().manual_seed(0)
    heads, head_dim, groups, dstate = 4, 8, 2, 8

    def randn(*shape, scale=1.0, dt=dtype):
        return (scale * torch.randn(*shape, generator=g)).to(dt).requires_grad_()

    inputs = dict(
        x=randn(batch, seq_len, heads, head_dim),
        dt=randn(batch, seq_len, heads, scale=0.5),
        A=(-torch.rand(heads, generator=g) - 0.1).requires_grad_(),
        B=randn(batch, seq_len, groups, dstate),
        C=randn(batch, seq_len, groups, dstate),
        D=randn(heads, dt=torch.float32),
        dt_bias=randn(heads, scale=0.3, dt=torch.float32),
        initial_states=randn(batch, heads, head_dim, dstate, dt=torch.float32),
    )
    w_y = torch.randn(batch, seq_len, heads, head_dim, generator=g)
    w_h = torch.randn(batch, heads, head_dim, dstate, generator=g)

    def run():
        y, final = kernels.ssd_scan_with_state(
            inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], chunk_size=chunk_size, D=inputs["D"],
            dt_bias=inputs["dt_bias"], dt_limit=(0.0, float("inf")), initial_states=inputs["initial_states"],
        )  # fmt: skip
        return y, final

    def loss():
        y, final = run()
        return (y.float() * w_y).sum() + (final * w_h).sum()

    with kernel_branch():
        y, final = run()
        ours = _grads(loss, list(inputs.values()))
    with torch_path():
        y_ref, final_ref = run()
        ref = _grads(loss, list(inputs.values()))
    assert kernel_calls()["chunk_scan_fwd"] == 2 and kernel_calls()["chunk_scan_bwd"] == 1
    assert relative_error(y, y_ref) < TOLERANCE[dtype]
    assert relative_error(final, final_ref) < TOLERANCE[dtype]
    for name, a, b in zip(inputs, ours, ref):
        assert relative_error(a, b) < TOLERANCE[dtype], name


# ----- the causal conv: causal_conv1d_fn where it takes the shape, the torch conv elsewhere -----------------------
def _strided_segment(batch, dim, seq_len, dtype, extra=5, seed=0):
    """(b, dim, l) the way the mixers produce it: channels sliced out of a wider projection and transposed, so a
    batch-1, one-token segment has strides that `.contiguous()` leaves alone."""
    g = torch.Generator().manual_seed(seed)
    projected = torch.randn(batch, seq_len, dim + extra, generator=g).to(dtype).requires_grad_()
    return projected, projected[..., extra:].transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("dim", [16, 12])
@pytest.mark.parametrize(("batch", "seq_len"), [(2, 9), (1, 1)], ids=["b2-L9", "b1-L1"])
def test_conv_matches_torch_conv_or_falls_back(kernel_calls, batch, seq_len, dim, width, dtype):
    """Fault (b): every width, channel count and layout works; the kernel serves exactly the shapes it takes."""
    g = torch.Generator().manual_seed(3)
    projected, hidden_states = _strided_segment(batch, dim, seq_len, dtype)
    conv_state = torch.randn(batch, dim, width, generator=g).to(dtype).requires_grad_()
    weight = torch.randn(dim, 1, width, generator=g).to(dtype).requires_grad_()
    bias = torch.randn(dim, generator=g).to(dtype).requires_grad_()
    w_out = torch.randn(batch, dim, seq_len, generator=g)
    leaves = [projected, conv_state, weight, bias]

    def run():
        return kernels.causal_conv1d_with_state(hidden_states, conv_state, weight, bias, activation="silu")

    def loss():
        out, new_state = run()
        return (out.float() * w_out).sum() + new_state.float().square().sum()

    with kernel_branch():
        out, new_state = run()
        ours = _grads(loss, leaves)
    with torch_path():
        out_ref, new_state_ref = run()
        ref = _grads(loss, leaves)
    takes = 2 <= width <= 4 and dim % 8 == 0
    assert kernel_calls().get("causal_conv1d_fwd", 0) == (2 if takes else 0)
    assert kernel_calls().get("causal_conv1d_bwd", 0) == (1 if takes else 0)
    assert out.dtype == out_ref.dtype and out.shape == out_ref.shape
    assert relative_error(out, out_ref) < TOLERANCE[dtype]
    assert torch.equal(new_state, new_state_ref)
    for name, a, b in zip(["hidden_states", "conv_state", "weight", "bias"], ours, ref):
        assert relative_error(a, b) < TOLERANCE[dtype], name


# ----- capability: what imports is what runs ------------------------------------------------------------------------
def test_missing_selective_scan_cuda_disables_only_the_mamba1_scan():
    """Fault (c): mamba-ssm after 2.3.2 imports without `selective_scan_cuda` (MAMBA_KEEP_CUDA_BUILD opt-in) and sets
    it to None. Then only Mamba-1's scan is unavailable; Mamba-2's Triton scan and the conv still serve."""
    from mamba_ssm.ops import selective_scan_interface

    def clear_caches():
        for load in kernels._KERNEL_IMPORTS.values():
            load.cache_clear()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(selective_scan_interface, "selective_scan_cuda", None)
        clear_caches()
        available = kernels.kernel_availability()
        x = torch.zeros(1, 2, 8)
        with kernel_branch():
            mamba2_scan = kernels.kernel("mamba_chunk_scan_combined", x)
            with pytest.raises(RuntimeError, match="MAMBA_KEEP_CUDA_BUILD"):
                kernels.kernel("selective_scan_fn", x)
    clear_caches()
    assert available["selective_scan_fn"] is False
    assert available["mamba_chunk_scan_combined"] is True and available["causal_conv1d_fn"] is True
    assert mamba2_scan is not None
    assert kernels.kernel_availability()["selective_scan_fn"] is True


def test_all_kernel_functions_import_here():
    assert kernels.kernel_availability() == {
        "selective_scan_fn": True,
        "mamba_chunk_scan_combined": True,
        "causal_conv1d_fn": True,
        "chunk_gated_delta_rule": True,
        "chunk_gla": True,
        "chunk_dplr_delta_rule": True,
        "chunk_rwkv6": True,
    }


# ----- no host-device synchronisation in the per-segment path -------------------------------------------------------
def test_mamba1_and_conv_kernel_paths_never_read_values_back(kernel_calls):
    """Forward and backward of the Mamba-1 scan (with the final state's gradient) and of the conv, on the kernel
    branch, with every Tensor -> Python conversion made to raise. (The Triton interpreter itself converts tensors to
    numpy, so Mamba-2's dispatch is checked statically in test_dispatch.py.)"""
    inputs = _mamba1_inputs(2, 16, 20, 4, torch.float32)
    projected, hidden_states = _strided_segment(2, 16, 6, torch.float32)
    conv_state = torch.randn(2, 16, 4, requires_grad=True)
    weight, bias = torch.randn(16, 1, 4, requires_grad=True), torch.randn(16, requires_grad=True)

    def forbidden(*args, **kwargs):
        raise AssertionError("a host-device sync in the per-segment path")

    with kernel_branch(), pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu"):
            patch.setattr(torch.Tensor, name, forbidden)
        y, final = kernels.selective_scan_with_state(*inputs.values())
        out, new_state = kernels.causal_conv1d_with_state(hidden_states, conv_state, weight, bias)
        (y.sum() + final.sum() + out.sum() + new_state.sum()).backward()
    assert inputs["u"].grad is not None and projected.grad is not None
    assert kernel_calls()["selective_scan_bwd"] == 1 and kernel_calls()["causal_conv1d_bwd"] == 1
