"""Every fast scan path against its step-by-step reference, forward and backward."""

import pytest
import torch

from hf_longssm.modeling.mamba import (
    _torch_zero_start_scan,
    selective_scan_chunked,
    selective_scan_from_zero_with_correction,
    selective_scan_ref,
)
from hf_longssm.modeling.mamba2 import ssd_chunk_scan, ssd_scan_ref


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
    y, h = selective_scan_from_zero_with_correction(_torch_zero_start_scan, **inputs, delta_softplus=True)
    y_ref, h_ref = selective_scan_ref(**inputs, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


def mamba2_inputs(batch=2, seq_len=45, heads=4, head_dim=3, groups=2, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, seq_len, heads, head_dim, generator=g),
        dt=torch.nn.functional.softplus(torch.randn(batch, seq_len, heads, generator=g)),
        A=-torch.rand(heads, generator=g) * 3,
        B=torch.randn(batch, seq_len, groups, n, generator=g),
        C=torch.randn(batch, seq_len, groups, n, generator=g),
        D=torch.randn(heads, generator=g),
        initial_states=torch.randn(batch, heads, head_dim, n, generator=g),
    )


@pytest.mark.parametrize("seq_len,chunk", [(1, 8), (8, 8), (45, 8), (45, 64), (100, 16)])
def test_mamba2_chunk_scan_equals_recurrence(seq_len, chunk):
    inputs = mamba2_inputs(seq_len=seq_len)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y, h = ssd_chunk_scan(chunk_size=chunk, **leaves)
    probe_y, probe_h = torch.randn_like(y), torch.randn_like(h)
    ((y * probe_y).sum() + (h * probe_h).sum()).backward()
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y_ref, h_ref = ssd_scan_ref(**ref_leaves)
    ((y_ref * probe_y).sum() + (h_ref * probe_h).sum()).backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    for k, v in leaves.items():
        torch.testing.assert_close(v.grad, ref_leaves[k].grad, rtol=1e-5, atol=1e-4, msg=k)


@pytest.mark.parametrize("scale", [0.1, 3.0, 40.0], ids=["float32-range", "float64-range", "pairwise-range"])
def test_mamba1_chunk_scan_every_decay_regime_equals_loop(scale):
    """Mild decays take the float32 factorized form, deeper ones float64, extreme ones the halved pairwise form."""
    inputs = mamba1_inputs(seq_len=70, seed=7)
    inputs["delta_bias"] = torch.full_like(inputs["delta_bias"], scale)
    y, h = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=64)
    y_ref, h_ref = selective_scan_ref(**inputs, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
