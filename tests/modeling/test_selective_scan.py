"""Mamba-1 selective scan paths (`hf_longssm.modeling.ops.selective`) against the loop reference."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hf_longssm.modeling import selective_scan
from hf_longssm.modeling.ops import (
    selective,
    selective_scan_chunked,
    selective_scan_from_zero_with_correction,
    selective_scan_ref,
)


scan_module = selective  # the module, whose private scans the tests swap
ARGUMENTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


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


def outputs_and_gradients(scan, inputs, probe_seed=1, **kwargs):
    """y, the final state and the gradient of every tensor input, for one fixed random probe of both outputs."""
    leaves = {k: v.clone().requires_grad_(True) if v is not None else None for k, v in inputs.items()}
    y, h = scan(**leaves, **kwargs)
    g = torch.Generator().manual_seed(probe_seed)
    probe_y, probe_h = torch.randn(y.shape, generator=g), torch.randn(h.shape, generator=g)
    ((y * probe_y).sum() + (h * probe_h).sum()).backward()
    return y.detach(), h.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


def assert_equal_to_loop(inputs, **kwargs):
    """Forward, final state and all gradients of `selective_scan_chunked` against `selective_scan_ref`."""
    y, h, grads = outputs_and_gradients(selective_scan_chunked, inputs, delta_softplus=True, **kwargs)
    y_ref, h_ref, grads_ref = outputs_and_gradients(selective_scan_ref, inputs, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("seq_len,chunk", [(1, 16), (16, 16), (37, 16), (37, 8), (64, 5), (37, 1)])
def test_mamba1_chunked_scan_equals_loop(seq_len, chunk):
    assert_equal_to_loop(mamba1_inputs(seq_len=seq_len), chunk_size=chunk)


@pytest.mark.parametrize(
    "bias,A_scale",
    [(-4.0, 1.0), (0.1, 1.0), (3.0, 1.0), (40.0, 1.0), (10.0, 50.0)],
    ids=["small-dt", "mild", "deep", "past-exp-floor", "extreme"],
)
def test_mamba1_scan_every_decay_regime_equals_loop(bias, A_scale):
    """From dt ~ 0.02 to dt * A ~ -2000 per step: cumulative decays of 1e-3 to 1e-10^5 inside one chunk, and
    per-step log-decays below the floor of -80 (`_LOG_DECAY_FLOOR`); forward and every gradient stay exact."""
    inputs = mamba1_inputs(seq_len=70, seed=7)
    inputs["delta_bias"] = torch.full_like(inputs["delta_bias"], bias)
    inputs["A"] = inputs["A"] * A_scale
    assert_equal_to_loop(inputs, chunk_size=64)


def test_mamba1_chunked_scan_survives_extreme_decays():
    """Huge dt * A inside a chunk must not overflow (decays are only multiplied, never divided)."""
    inputs = mamba1_inputs(seq_len=40)
    inputs["delta"] = inputs["delta"] * 20 + 10
    inputs["A"] = inputs["A"] * 50
    y, h, grads = outputs_and_gradients(selective_scan_chunked, inputs, delta_softplus=True, chunk_size=32)
    assert all(torch.isfinite(t).all() for t in [y, h, *grads.values()])
    assert_equal_to_loop(inputs, chunk_size=32)


@pytest.mark.parametrize("seq_len,chunk", [(37, 37), (37, 16), (70, 64), (9, 9)], ids=lambda v: str(v))
def test_mamba1_blocked_in_chunk_scan_equals_loop(monkeypatch, seq_len, chunk):
    """The accelerator path (block-wise scan, fewer launches), run on the CPU: same values as the loop."""
    monkeypatch.setattr(scan_module, "_chunk_scan_for", lambda device: scan_module._scan_blocked_)
    inputs = mamba1_inputs(seq_len=seq_len, seed=3)
    inputs["delta_bias"] = torch.full_like(inputs["delta_bias"], 3.0)
    assert_equal_to_loop(inputs, chunk_size=chunk)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("steps", [1, 2, 4, 7, 16, 17, 40])
def test_in_chunk_scans_solve_the_recurrence(steps, reverse):
    g = torch.Generator().manual_seed(steps)
    x, a, h = (
        torch.randn(steps, 3, 2, generator=g),
        torch.rand(steps, 3, 2, generator=g),
        torch.randn(3, 2, generator=g),
    )
    expected, previous = x.clone(), h
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        expected[t] = expected[t] + a[t] * previous
        previous = expected[t]
    for scan_ in (scan_module._scan_sequential_, scan_module._scan_blocked_):
        for work in (torch.empty_like(a), None):
            out, decays = x.clone(), a.clone()
            scan_(out, decays, h, reverse, work)
            torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6, msg=scan_.__name__)
            if work is not None:
                assert torch.equal(decays, a), "with scratch space the decays are kept for the backward"


def test_selective_scan_has_mamba_ssm_defaults_and_optional_arguments():
    """mamba-ssm's signature: `delta_softplus=False` by default; D, z, delta_bias and the initial state optional."""
    inputs = mamba1_inputs(seq_len=29, seed=5)
    inputs["delta"] = torch.nn.functional.softplus(inputs["delta"])  # a valid step without softplus
    core = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    y, h = selective_scan(**core)
    y_ref, h_ref = selective_scan_ref(**core, delta_softplus=False)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    y_full, h_full = selective_scan(**inputs, delta_softplus=True)
    y_full_ref, h_full_ref = selective_scan_ref(**inputs, delta_softplus=True)
    torch.testing.assert_close(y_full, y_full_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_full, h_full_ref, rtol=1e-5, atol=1e-5)


def test_selective_scan_of_an_empty_segment_returns_the_carried_state():
    inputs = mamba1_inputs(seq_len=0)
    y, h = selective_scan(**inputs, delta_softplus=True)
    assert y.shape == (2, 6, 0)
    torch.testing.assert_close(h, inputs["initial_state"])


def test_selective_scan_in_bfloat16_computes_in_float32_and_returns_input_dtype_gradients():
    inputs = {k: v.bfloat16() for k, v in mamba1_inputs(seq_len=33, seed=2).items()}
    y, h, grads = outputs_and_gradients(selective_scan, inputs, delta_softplus=True, chunk_size=8)
    y_ref, h_ref, grads_ref = outputs_and_gradients(selective_scan_ref, inputs, delta_softplus=True)
    assert y.dtype == h.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    for k in grads:
        assert grads[k].dtype == torch.bfloat16, k
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-2, atol=1e-2, msg=k)


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.dtypes = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func.overloadpacket))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
        return out


def test_selective_scan_uses_no_float64_and_no_host_sync():
    """Every op of forward and backward, even at decays that once needed float64: none in float64, and none that
    reads a value back to the host (`.item()` is `_local_scalar_dense`)."""
    inputs = mamba1_inputs(seq_len=70, seed=7)
    inputs["delta_bias"] = torch.full_like(inputs["delta_bias"], 40.0)
    with _RecordOps() as record:
        outputs_and_gradients(selective_scan, inputs, delta_softplus=True, chunk_size=16)
    assert torch.float64 not in record.dtypes
    assert "aten._local_scalar_dense" not in record.ops and "aten.nonzero" not in record.ops
    assert "aten.addcmul_" in record.ops  # the recording did see the scan


def test_training_keeps_no_state_per_step():
    """The backward recomputes each chunk: autograd keeps O(b d l) tensors and the state at each chunk start, never the
    (b, d, l, n) states or decays (the loop reference keeps several of them)."""
    batch, dim, seq_len, chunk = 2, 64, 256, 32

    def saved_numels(state_size):
        inputs = {k: v.requires_grad_(True) for k, v in mamba1_inputs(batch, dim, seq_len, state_size).items()}
        numels = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: numels.append(t.numel()) or t, lambda t: t):
            selective_scan(**inputs, delta_softplus=True, chunk_size=chunk)
        return numels

    small, large = saved_numels(8), saved_numels(32)
    assert max(large) <= batch * dim * seq_len
    # Per unit of n, the saved memory grows by B, C (b l each) and the chunk starts (b d l / chunk), not by b d l.
    assert sum(large) - sum(small) < batch * dim * seq_len * (32 - 8) / 4


@pytest.mark.parametrize("seq_len", [1, 37, 300])
def test_zero_start_scan_plus_correction_equals_scan_from_state(seq_len):
    """The kernel path's arithmetic (zero-start scan + linear correction), checked with a torch zero-start scan."""
    inputs = mamba1_inputs(seq_len=seq_len, seed=4)
    y, h = selective_scan_from_zero_with_correction(torch_zero_start_scan, **inputs, delta_softplus=True)
    y_ref, h_ref = selective_scan_ref(**inputs, delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
