"""Mamba-1 selective scan paths (`hf_longssm.modeling.ops.selective_scan`) against the loop reference."""

import pytest
import torch

from hf_longssm.modeling.ops import (
    selective_scan_chunked,
    selective_scan_from_zero_with_correction,
    selective_scan_ref,
)


def torch_zero_start_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """A `selective_scan_fn`-compatible scan from zero in torch: the stand-in that checks the correction on CPU."""
    y, h = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (y, h) if return_last_state else y


def mamba1_inputs(batch=2, dim=6, seq_len=37, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, seq_len, generator=g),
        delta=torch.randn(batch, dim, seq_len, generator=g),
        A=-torch.rand(dim, n, generator=g) * 4,
        B=torch.randn(batch, n, seq_len, generator=g),
        C=torch.randn(batch, n, seq_len, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, seq_len, generator=g),
        delta_bias=torch.randn(dim, generator=g),
        initial_state=torch.randn(batch, dim, n, generator=g),
    )


@pytest.mark.parametrize("seq_len,chunk", [(1, 16), (16, 16), (37, 16), (37, 8), (64, 5)])
def test_mamba1_chunked_scan_equals_loop(seq_len, chunk):
    inputs = mamba1_inputs(seq_len=seq_len)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y, h = selective_scan_chunked(**leaves, delta_softplus=True, chunk_size=chunk)
    probe_y, probe_h = torch.randn_like(y), torch.randn_like(h)
    ((y * probe_y).sum() + (h * probe_h).sum()).backward()
    fast = {k: v.grad.clone() for k, v in leaves.items()}

    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y_ref, h_ref = selective_scan_ref(**ref_leaves, delta_softplus=True)
    ((y_ref * probe_y).sum() + (h_ref * probe_h).sum()).backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    for k in fast:
        torch.testing.assert_close(fast[k], ref_leaves[k].grad, rtol=1e-5, atol=1e-4, msg=k)


def test_mamba1_chunked_scan_survives_extreme_decays():
    """Huge dt * A inside a chunk must not overflow (decays are only multiplied, never divided)."""
    inputs = mamba1_inputs(seq_len=40)
    inputs["delta"] = inputs["delta"] * 20 + 10
    inputs["A"] = inputs["A"] * 50
    y, h = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=32)
    y_ref, h_ref = selective_scan_ref(**inputs, delta_softplus=True)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seq_len", [1, 37, 300])
def test_zero_start_scan_plus_correction_equals_scan_from_state(seq_len):
    """The kernel path's arithmetic (zero-start scan + linear correction), checked with a torch zero-start scan."""
    inputs = mamba1_inputs(seq_len=seq_len, seed=4)
    y, h = selective_scan_from_zero_with_correction(torch_zero_start_scan, **inputs, delta_softplus=True)
    y_ref, h_ref = selective_scan_ref(**inputs, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0], ids=["float32-range", "float64-range", "pairwise-range"])
def test_mamba1_chunk_scan_every_decay_regime_equals_loop(scale):
    """Mild decays take the float32 factorized form, deeper ones float64, extreme ones the halved pairwise form."""
    inputs = mamba1_inputs(seq_len=70, seed=7)
    inputs["delta_bias"] = torch.full_like(inputs["delta_bias"], scale)
    y, h = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=64)
    y_ref, h_ref = selective_scan_ref(**inputs, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
