"""Gated DeltaNet's chunked torch path (`hf_longssm.modeling.ops.gated_delta`) against the token-by-token recurrence
and against transformers' own reference (an implementation written apart from ours): outputs, final states and
gradients (the carried state's included), grouped keys, lengths that are not multiples of the chunk."""

import pytest
import torch

from hf_longssm.modeling.ops import gated_delta_rule_chunked, gated_delta_rule_ref


def gdn_inputs(batch=2, seq_len=45, key_heads=2, heads=4, k_dim=8, v_dim=6, seed=0, beta_max=1.0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        q=torch.randn(batch, seq_len, key_heads, k_dim, generator=g),
        k=torch.randn(batch, seq_len, key_heads, k_dim, generator=g),
        v=torch.randn(batch, seq_len, heads, v_dim, generator=g),
        g=-torch.rand(batch, seq_len, heads, generator=g) * 2,
        beta=torch.rand(batch, seq_len, heads, generator=g) * beta_max,
        initial_state=torch.randn(batch, heads, k_dim, v_dim, generator=g),
    )


def run_with_grads(fn, inputs, **kwargs):
    leaves = {name: t.clone().requires_grad_(True) for name, t in inputs.items()}
    o, state = fn(**leaves, **kwargs)
    probe = torch.Generator().manual_seed(1)
    weights = torch.randn(o.shape, generator=probe), torch.randn(state.shape, generator=probe)
    ((o * weights[0]).sum() + (state * weights[1]).sum()).backward()
    return o.detach(), state.detach(), {name: t.grad for name, t in leaves.items()}


@pytest.mark.parametrize(("seq_len", "chunk"), [(1, 8), (8, 8), (45, 8), (45, 64), (100, 16)])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])  # OLMo-Hybrid's negative eigenvalues: beta up to 2
def test_chunked_equals_recurrence_with_gradients(seq_len, chunk, beta_max):
    inputs = gdn_inputs(seq_len=seq_len, beta_max=beta_max)
    o, state, grads = run_with_grads(gated_delta_rule_chunked, inputs, chunk_size=chunk)
    o_ref, state_ref, grads_ref = run_with_grads(gated_delta_rule_ref, inputs)
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, state_ref, rtol=1e-4, atol=1e-4)
    for name in inputs:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-4, msg=name)
    assert grads["initial_state"].abs().max() > 0  # the carried state gets a gradient


def test_the_recurrence_equals_transformers_reference():
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_recurrent_gated_delta_rule

    inputs = gdn_inputs()
    ours, ours_state = gated_delta_rule_ref(**inputs)
    # Each key head serves consecutive value heads (transformers < 5.24 repeats them in the layer, not here)
    q, k = (inputs[name].repeat_interleave(2, dim=2) for name in ("q", "k"))
    theirs, theirs_state = torch_recurrent_gated_delta_rule(
        q, k, inputs["v"], inputs["g"], inputs["beta"], initial_state=inputs["initial_state"],
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_state, theirs_state, rtol=1e-5, atol=1e-5)


def test_segments_from_the_carried_state_equal_one_pass():
    inputs = gdn_inputs(seq_len=70)
    o, state = gated_delta_rule_chunked(**inputs, chunk_size=16)
    carried, outputs = inputs["initial_state"], []
    for a, b in ((0, 13), (13, 14), (14, 70)):
        part = {name: t[:, a:b] for name, t in inputs.items() if name != "initial_state"}
        out, carried = gated_delta_rule_chunked(**part, initial_state=carried, chunk_size=16)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), o, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(carried, state, rtol=1e-5, atol=1e-5)
    # Sensitivity: from a zero state the outputs differ, so the comparison above can fail.
    zero, _ = gated_delta_rule_chunked(**{**inputs, "initial_state": torch.zeros_like(state)}, chunk_size=16)
    assert (zero - o).abs().max() > 1e-2
