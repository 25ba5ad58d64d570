"""Mamba-2 chunked SSD scan (`hf_longssm.modeling.ops.ssd`) against the step-by-step recurrence."""

import pytest
import torch

from hf_longssm.modeling.ops import ssd_chunk_scan, ssd_scan_ref


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
