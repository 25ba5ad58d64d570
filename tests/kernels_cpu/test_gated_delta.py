"""Gated DeltaNet on the kernel branch: fla's `chunk_gated_delta_rule` (its real Triton kernels in Triton's
interpreter) from a carried state against the torch path, forward and backward, grouped keys and lengths that are not
multiples of its chunk (64)."""

from __future__ import annotations

import pytest
import torch

from hf_longssm.modeling import kernels

from .helpers import kernel_branch, relative_error, torch_path


pytestmark = pytest.mark.kernels_cpu


def _inputs(batch, seq_len, key_heads, heads, k_dim, v_dim, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).requires_grad_()

    return dict(
        q=randn(batch, seq_len, key_heads, k_dim),
        k=randn(batch, seq_len, key_heads, k_dim),
        v=randn(batch, seq_len, heads, v_dim),
        g=(-torch.rand(batch, seq_len, heads, generator=g) * 2).requires_grad_(),
        beta=torch.rand(batch, seq_len, heads, generator=g).requires_grad_(),
        initial_state=randn(batch, heads, k_dim, v_dim, scale=0.5),
    )


@pytest.mark.parametrize("seq_len", [1, 37, 70])
@pytest.mark.parametrize("key_heads", [2, 4])
def test_fla_chunk_gated_delta_rule_from_a_carried_state_equals_the_torch_path(kernel_calls, seq_len, key_heads):
    inputs = _inputs(2, seq_len, key_heads, 4, 16, 16)
    results, grads = {}, {}
    for on in (True, False):
        for t in inputs.values():
            t.grad = None
        with kernel_branch(on) if on else torch_path():
            o, final = kernels.gated_delta_rule_with_state(**inputs)
        (o.square().sum() + final.square().sum()).backward()  # the final state's gradient flows back too
        results[on] = (o.detach(), final.detach())
        grads[on] = {name: t.grad.clone() for name, t in inputs.items()}
    calls = kernel_calls()
    assert calls["chunk_gated_delta_rule_fwd"] > 0 and calls["chunk_gated_delta_rule_bwd"] > 0, calls
    for ours, theirs in zip(results[True], results[False]):
        assert relative_error(ours, theirs) < 2e-5
    for name in inputs:
        assert relative_error(grads[True][name], grads[False][name]) < 1e-4, name
