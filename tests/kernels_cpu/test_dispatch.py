"""The kernel dispatch without the kernels (runs in `make test`): the flags, the per-function availability, the conv's
layout rules, the Mamba-1 final-state gradient against a stand-in that drops it as mamba-ssm's backward does, and no
host-device synchronisation in `kernels.py` / `kernel_correction.py`."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

from hf_longssm.modeling import kernel_availability, kernels
from hf_longssm.modeling.ops import kernel_correction, selective_scan_ref

from .helpers import DISABLE, FORCE, kernel_branch, relative_error, torch_path


def test_force_and_disable_together_is_an_error(monkeypatch):
    monkeypatch.setenv(FORCE, "1")
    monkeypatch.setenv(DISABLE, "1")
    with pytest.raises(ValueError, match="unset one of them"):
        kernels.kernel("causal_conv1d_fn", torch.zeros(1))


def test_cpu_tensors_take_the_torch_path_unless_forced(monkeypatch):
    monkeypatch.delenv(FORCE, raising=False)
    monkeypatch.delenv(DISABLE, raising=False)
    calls = []
    monkeypatch.setitem(kernels._KERNEL_IMPORTS, "causal_conv1d_fn", lambda: calls.append(1) or (len, ""))
    assert kernels.kernel("causal_conv1d_fn", torch.zeros(1)) is None and calls == []
    with kernel_branch():
        assert kernels.kernel("causal_conv1d_fn", torch.zeros(1)) is len
    with torch_path():
        assert kernels.kernel("causal_conv1d_fn", torch.zeros(1)) is None


def test_forcing_a_missing_kernel_says_which_and_why(monkeypatch):
    monkeypatch.setitem(kernels._KERNEL_IMPORTS, "selective_scan_fn", lambda: (None, "mamba-ssm is not installed"))
    with kernel_branch(), pytest.raises(RuntimeError, match="selective_scan_fn is unavailable: mamba-ssm is not"):
        kernels.kernel("selective_scan_fn", torch.zeros(1))


def test_availability_is_reported_per_function():
    available = kernel_availability()
    assert set(available) == {
        "selective_scan_fn",
        "mamba_chunk_scan_combined",
        "causal_conv1d_fn",
        "chunk_gated_delta_rule",
        "chunk_gla",
        "chunk_dplr_delta_rule",
        "chunk_rwkv6",
    }
    assert all(isinstance(ok, bool) for ok in available.values())


# ----- the conv: which shapes causal_conv1d_fn takes, and the layout it needs --------------------------------------
@pytest.mark.parametrize(
    ("dim", "width", "takes"),
    [(16, 1, False), (16, 2, True), (16, 3, True), (16, 4, True), (16, 5, False), (16, 6, False), (12, 4, False)],
)
def test_conv_kernel_takes_widths_2_to_4_and_channels_in_eights(dim, width, takes):
    assert (kernels._conv_kernel_refusal(dim, width) is None) == takes


@pytest.mark.parametrize(("batch", "seq_len"), [(1, 1), (1, 7), (3, 1), (2, 5)])
def test_channel_last_layout_has_the_strides_causal_conv1d_needs(batch, seq_len):
    """A (b, d, l) slice of a wider projection, as the mixers make it: `.transpose(1, 2).contiguous()` keeps its
    strides when b = l = 1; `_channel_last` always gives (l * d, 1, d)."""
    dim = 16
    projected = torch.randn(batch, seq_len, dim + 4)
    segment = projected[..., 4:].transpose(1, 2)
    out = kernels._channel_last(segment)
    assert torch.equal(out, segment)
    assert out.stride() == (seq_len * dim, 1, dim)
    assert kernels._is_kernel_channel_last(out)
    if batch == seq_len == 1:
        kept = segment.transpose(1, 2).contiguous().transpose(1, 2)
        assert not kernels._is_kernel_channel_last(kept)  # the layout causal_conv1d_fn refused


# ----- Mamba-1: the final state's gradient, which mamba-ssm's backward drops ----------------------------------------
def _kernel_like_selective_scan_fn(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, last=False
):
    """mamba-ssm's `selective_scan_fn` contract from the torch reference, dropping the last state's gradient as
    `SelectiveScanFn.backward` does ("the gradient of the last state is not considered")."""
    y, final = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return y, final.detach()


def _scan_inputs(seq_len=23):
    g = torch.Generator().manual_seed(0)
    batch, dim, dstate = 2, 6, 4
    return dict(
        u=torch.randn(batch, dim, seq_len, generator=g).requires_grad_(),
        delta=(0.5 * torch.randn(batch, dim, seq_len, generator=g)).requires_grad_(),
        A=(-torch.rand(dim, dstate, generator=g) * 2 - 0.05).requires_grad_(),
        B=torch.randn(batch, dstate, seq_len, generator=g).requires_grad_(),
        C=torch.randn(batch, dstate, seq_len, generator=g).requires_grad_(),
        D=torch.randn(dim, generator=g).requires_grad_(),
        z=torch.randn(batch, dim, seq_len, generator=g).requires_grad_(),
        delta_bias=(0.3 * torch.randn(dim, generator=g)).requires_grad_(),
        initial_state=torch.randn(batch, dim, dstate, generator=g).requires_grad_(),
    )


@pytest.mark.parametrize("seq_len", [1, 23, 300])
def test_kernel_branch_keeps_the_final_state_gradient(monkeypatch, seq_len):
    """Fault (a) without the kernels: a zero-start scan whose last state carries no gradient, as mamba-ssm's."""
    monkeypatch.setitem(kernels._KERNEL_IMPORTS, "selective_scan_fn", lambda: (_kernel_like_selective_scan_fn, ""))
    inputs = _scan_inputs(seq_len)
    g = torch.Generator().manual_seed(1)
    w_y, w_h = torch.randn(2, 6, seq_len, generator=g), torch.randn(2, 6, 4, generator=g)

    def grads():
        for t in inputs.values():
            t.grad = None
        y, final = kernels.selective_scan_with_state(*inputs.values())
        ((y * w_y).sum() + (final * w_h).sum()).backward()
        return {k: t.grad.clone() for k, t in inputs.items()}

    with kernel_branch():
        ours = grads()
    with torch_path():
        ref = grads()
    for name in ref:
        assert relative_error(ours[name], ref[name]) < 2e-5, name


def test_final_state_gradient_matches_autograd_through_the_reference():
    inputs = _scan_inputs(37)
    u, delta, A, B, delta_bias = (inputs[k] for k in ("u", "delta", "A", "B", "delta_bias"))
    _, final = selective_scan_ref(u, delta, A, B, inputs["C"], None, None, delta_bias, True)
    weights = torch.randn(final.shape, generator=torch.Generator().manual_seed(2))
    ref = torch.autograd.grad((final * weights).sum(), [u, delta, A, B, delta_bias])
    torch_final = kernel_correction.zero_start_final_state(u, delta, A, B, delta_bias, True, chunk_size=8)
    assert relative_error(torch_final, final) < 1e-6
    attached = kernel_correction.attach_final_state_gradient(final.detach(), u, delta, A, B, delta_bias, True, 8)
    ours = torch.autograd.grad((attached * weights).sum(), [u, delta, A, B, delta_bias])
    for name, a, b in zip(["u", "delta", "A", "B", "delta_bias"], ours, ref):
        assert relative_error(a, b) < 2e-6, name


def test_final_state_gradient_costs_nothing_without_autograd():
    inputs = _scan_inputs(5)
    last = torch.randn(2, 6, 4)
    with torch.no_grad():
        assert (
            kernel_correction.attach_final_state_gradient(last, *(inputs[k] for k in ("u", "delta", "A", "B"))) is last
        )
    detached = [inputs[k].detach() for k in ("u", "delta", "A", "B")]
    assert kernel_correction.attach_final_state_gradient(last, *detached) is last


# ----- no host-device synchronisation --------------------------------------------------------------------------
_SYNCS = {"item", "tolist", "cpu", "numpy", "nonzero", "synchronize"}


@pytest.mark.parametrize("module", [kernels, kernel_correction], ids=["kernels", "kernel_correction"])
def test_no_value_is_read_back_to_the_host(module):
    """Nothing in the per-segment dispatch waits for the device: no `.item()`, `.tolist()`, `.cpu()`, ... (the kernel
    branch's Mamba-1 and conv paths are also run with those conversions raising, in test_kernel_ops.py)."""
    tree = ast.parse(inspect.getsource(module))
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SYNCS
    ]
    assert calls == []
