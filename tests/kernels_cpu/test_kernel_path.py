"""Whole models on the kernel branch (HF_LONGSSM_FORCE_KERNELS=1) against the torch path
(HF_LONGSSM_DISABLE_KERNELS=1), for Mamba, FalconMamba, Mamba-2 and the hybrids: segmented logits and final states,
gradients from a detached state, through an attached one (BPTT across segments) and into a state that requires grad,
in fp32 and fp16, at edge shapes.

The kernels are mamba-ssm's and causal-conv1d's real Python wrappers over CPU stand-ins of their compiled extensions
and Triton's interpreter (conftest.py). Shapes stay tiny: one Mamba-2 layer's forward and backward take seconds there.
Run in the kernels environment: `python -m pytest -m kernels_cpu tests/kernels_cpu` (`.ci/run`).
"""

from __future__ import annotations

import pytest
import torch

import hf_longssm as hl
from tests.utils import GATED_DELTANET_TYPES, HYBRID_TYPES, MODEL_TYPES, split_points, tiny_hybrid, tiny_model

from .helpers import kernel_branch, relative_error, torch_path


pytestmark = pytest.mark.kernels_cpu

# Relative to the largest value compared: fp32 runs the same maths in another order; fp16 rounds the activations.
TOLERANCE = {torch.float32: 5e-5, torch.float16: 3e-2}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


def _model(model_type, dtype=torch.float32, **overrides):
    return tiny_model(model_type, num_hidden_layers=overrides.pop("num_hidden_layers", 2), **overrides).to(dtype)


def _ids(batch, length, seed=1):
    return torch.randint(1, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


def _noise_state(model, batch, requires_grad=False):
    """A nonzero carried state (SSM states and conv windows), so that every segment starts from something."""
    g = torch.Generator().manual_seed(5)
    state = hl.CarriedState.random_noise(model, batch, std=0.5, generator=g)
    conv = [(0.5 * torch.randn(c.shape, generator=g)).to(c.dtype) for c in state.conv_states]
    state = hl.CarriedState(conv, state.recurrent_states, state.config)
    if requires_grad:
        for t in state.conv_states + state.recurrent_states:
            t.requires_grad_(True)
    return state


def _segments(model, ids, sizes, state, attached=True):
    """Per-segment outputs with the state carried (detached between segments unless `attached`)."""
    outputs = []
    for start, end in split_points(ids.shape[1], sizes):
        labels = ids[:, start + 1 : end + 1]
        if labels.shape[1] < end - start:  # the last segment: no target after the last token
            labels = torch.cat([labels, torch.full_like(ids[:, :1], -100)], dim=1)
        out, state = hl.forward_with_state(model, ids[:, start:end], state, shift_labels=labels)
        outputs.append(out)
        state = state if attached else state.detach()
    return outputs, state


def _param_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(ours, theirs, dtype, what):
    err = relative_error(ours, theirs)
    assert err < TOLERANCE[dtype], f"{what}: relative error {err:.2e}"


def _assert_kernels_ran(model_type, calls, backward=False):
    scan = {"mamba2": "chunk_scan", "gated_deltanet": "chunk_gated_delta_rule"}.get(model_type, "selective_scan")
    assert calls.get(f"{scan}_fwd", 0) > 0 and calls.get("causal_conv1d_fwd", 0) > 0, calls
    if backward:
        assert calls.get(f"{scan}_bwd", 0) > 0 and calls.get("causal_conv1d_bwd", 0) > 0, calls


# ----- forward ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_segmented_logits_and_final_states(kernel_calls, model_type, dtype):
    """Segments of 17, 1 and 22 tokens (Mamba-2's chunk of 16 divides none) from a noisy state."""
    model = _model(model_type, dtype).eval()
    ids = _ids(2, 40)
    results = {}
    for on in (True, False):
        with kernel_branch(on), torch.no_grad():
            outputs, state = _segments(model, ids, [17, 1, 22], _noise_state(model, 2))
        results[on] = torch.cat([o.logits for o in outputs], 1), state
    _assert_kernels_ran(model_type, kernel_calls())
    (logits, state), (logits_ref, state_ref) = results[True], results[False]
    _assert_close(logits, logits_ref, dtype, "logits")
    for layer, (a, b) in enumerate(zip(state.recurrent_states, state_ref.recurrent_states)):
        _assert_close(a, b, dtype, f"recurrent state {layer}")
    for layer, (a, b) in enumerate(zip(state.conv_states, state_ref.conv_states)):
        _assert_close(a, b, dtype, f"conv state {layer}")  # layer 0's window holds inputs: equal; later ones: close
    assert torch.equal(state.conv_states[0], state_ref.conv_states[0])


# ----- backward --------------------------------------------------------------------------------------------------
def _compare_gradients(model, run, dtype, extra_leaves=()):
    grads = {}
    for on in (True, False):
        model.zero_grad()
        for t in extra_leaves:
            t.grad = None
        with kernel_branch(on):
            run().backward()
        grads[on] = _param_grads(model), [t.grad.clone() for t in extra_leaves]
    (ours, ours_extra), (ref, ref_extra) = grads[True], grads[False]
    assert ours.keys() == ref.keys()
    errors = {name: relative_error(ours[name], ref[name]) for name in ref}
    errors.update({f"state leaf {i}": relative_error(a, b) for i, (a, b) in enumerate(zip(ours_extra, ref_extra))})
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE[dtype], f"{worst}: relative error {errors[worst]:.2e} (worst of {len(errors)})"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradients_from_a_detached_state(kernel_calls, model_type):
    """TBTT: each segment's loss, the state detached between segments (the kernels' own backward suffices)."""
    model = _model(model_type).train()
    ids = _ids(2, 36)

    def run():
        outputs, _ = _segments(model, ids, [20, 16], _noise_state(model, 2), attached=False)
        return sum(o.loss for o in outputs)

    _compare_gradients(model, run, torch.float32)
    _assert_kernels_ran(model_type, kernel_calls(), backward=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradients_through_an_attached_state(kernel_calls, model_type, dtype):
    """Fault (a): BPTT across two segments, plus a loss on the final state. On Mamba-1 / FalconMamba the gradient
    that crosses the boundary goes through the kernel's final state, whose gradient mamba-ssm's backward drops."""
    model = _model(model_type, dtype).train()
    ids = _ids(2, 36)

    def run():
        outputs, state = _segments(model, ids, [20, 16], _noise_state(model, 2), attached=True)
        return sum(o.loss for o in outputs) + sum(s.float().square().mean() for s in state.recurrent_states)

    _compare_gradients(model, run, dtype)
    _assert_kernels_ran(model_type, kernel_calls(), backward=True)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradients_into_a_state_that_requires_grad(kernel_calls, model_type):
    """A learned or probed initial state: gradients into its SSM states and conv windows, and the parameters'."""
    model = _model(model_type).train()
    ids = _ids(2, 21)
    state = _noise_state(model, 2, requires_grad=True)
    leaves = state.conv_states + state.recurrent_states

    def run():
        outputs, final = _segments(model, ids, [21], state)
        return outputs[0].loss + sum(s.square().mean() for s in final.recurrent_states)

    _compare_gradients(model, run, torch.float32, leaves)
    _assert_kernels_ran(model_type, kernel_calls(), backward=True)


# ----- edge shapes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_batch_one_with_one_token_segments(kernel_calls, model_type):
    """Fault (b): batch 1, one-token segments, BPTT through all of them (the conv's input and gradient layouts)."""
    model = _model(model_type, num_hidden_layers=1).train()
    ids = _ids(1, 6)

    def run():
        outputs, _ = _segments(model, ids, [1, 1, 3, 1], _noise_state(model, 1), attached=True)
        return sum(o.loss for o in outputs[:-1]) + outputs[-1].logits.square().mean()

    _compare_gradients(model, run, torch.float32)
    _assert_kernels_ran(model_type, kernel_calls(), backward=True)


CONV_EDGES = [
    # (model_type, overrides, whether causal_conv1d_fn takes the conv)
    pytest.param("mamba", {"conv_kernel": 1}, False, id="mamba-width1"),
    pytest.param("mamba", {"conv_kernel": 2}, True, id="mamba-width2"),
    pytest.param("falcon_mamba", {"conv_kernel": 3}, True, id="falcon_mamba-width3"),
    pytest.param("mamba", {"conv_kernel": 5}, False, id="mamba-width5"),
    pytest.param("falcon_mamba", {"conv_kernel": 6}, False, id="falcon_mamba-width6"),
    pytest.param("mamba", {"intermediate_size": 20}, False, id="mamba-channels20"),
    # conv channels = 64 + 2 * 1 * 6 = 76, not a multiple of 8; chunk 8 does not divide 19
    pytest.param("mamba2", {"n_groups": 1, "state_size": 6, "chunk_size": 8}, False, id="mamba2-channels76-chunk8"),
    pytest.param("mamba2", {"conv_kernel": 6, "chunk_size": 32}, False, id="mamba2-width6-chunk32"),
]


@pytest.mark.parametrize(("model_type", "overrides", "conv_kernel_serves"), CONV_EDGES)
def test_conv_widths_and_channel_counts(kernel_calls, model_type, overrides, conv_kernel_serves):
    """Fault (b): widths 1..6 and channel counts not divisible by 8 take the torch conv, the rest the kernel;
    logits and gradients equal the torch path either way (BPTT across two segments)."""
    model = _model(model_type, num_hidden_layers=1, **overrides).train()
    ids = _ids(2, 19)
    with kernel_branch(), torch.no_grad():
        logits = torch.cat([o.logits for o in _segments(model, ids, [12, 7], _noise_state(model, 2))[0]], 1)
    with torch_path(), torch.no_grad():
        logits_ref = torch.cat([o.logits for o in _segments(model, ids, [12, 7], _noise_state(model, 2))[0]], 1)
    _assert_close(logits, logits_ref, torch.float32, "logits")

    def run():
        outputs, _ = _segments(model, ids, [12, 7], _noise_state(model, 2), attached=True)
        return sum(o.loss for o in outputs)

    _compare_gradients(model, run, torch.float32)
    calls = kernel_calls()
    assert (calls.get("causal_conv1d_fwd", 0) > 0) == conv_kernel_serves, calls
    scan = "chunk_scan" if model_type == "mamba2" else "selective_scan"
    assert calls.get(f"{scan}_fwd", 0) > 0 and calls.get(f"{scan}_bwd", 0) > 0, calls


# ----- hybrids: their Mamba layers on the kernels, their attention layers with carried keys --------------------------
@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_hybrids_segmented_logits_and_gradients_through_attached_states(kernel_calls, model_type):
    model = tiny_hybrid(model_type)
    ids = _ids(2, 40)

    def run():
        outputs, _ = _segments(model, ids, [17, 1, 22], hl.CarriedState.zeros(model, 2, attention_state="full"))
        return outputs

    logits = {}
    for on in (True, False):
        with kernel_branch(on), torch.no_grad():
            logits[on] = torch.cat([o.logits for o in run()], 1)
    # Jamba: Mamba-1 layers; Qwen3-Next, Qwen3.5, OLMo-Hybrid: Gated DeltaNet layers (fla's kernel); LFM2: the conv
    if model_type.startswith("lfm2"):
        assert kernel_calls().get("causal_conv1d_fwd", 0) > 0, kernel_calls()
    else:
        kind = (
            "mamba" if model_type == "jamba" else "gated_deltanet" if model_type in GATED_DELTANET_TYPES else "mamba2"
        )
        _assert_kernels_ran(kind, kernel_calls())
    _assert_close(logits[True], logits[False], torch.float32, "logits")
    _compare_gradients(model.train(), lambda: sum(o.loss for o in run()), torch.float32)


# ----- training-free length extensions (`hf_longssm.extend`) ------------------------------------------------------
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_length_extensions_on_the_kernel_path(kernel_calls, model_type):
    """A transformed Δ reaches the kernels with their softplus and bias off: logits, final states and gradients
    (through an attached state and into MambaExtend's scale) equal the torch path; in fp16 too (selective_scan.cpp
    takes Δ in the input's dtype, while a transformed Δ is float32)."""
    from hf_longssm.extension import stateful_mixers
    from hf_longssm.modeling.delta import FilterDelta, ScaleDelta, set_delta_transform

    half = _model(model_type, torch.float16).eval()
    for mixer in stateful_mixers(half):
        set_delta_transform(mixer, ScaleDelta(torch.tensor(0.4)))
    logits = {}
    for on in (True, False):
        with kernel_branch(on), torch.no_grad():
            outputs, _ = _segments(half, _ids(2, 40), [17, 23], _noise_state(half, 2))
        logits[on] = torch.cat([o.logits for o in outputs], 1)
    _assert_close(logits[True], logits[False], torch.float16, "fp16 logits")

    model = _model(model_type).eval()
    ids = _ids(2, 40)
    mixers = stateful_mixers(model)
    channels = mixers[0].num_heads if model_type == "mamba2" else mixers[0].intermediate_size
    for transform in (ScaleDelta(torch.tensor(0.4)), FilterDelta(torch.full((channels,), 0.6))):
        for mixer in mixers:
            set_delta_transform(mixer, transform)
        results = {}
        for on in (True, False):
            with kernel_branch(on), torch.no_grad():
                outputs, state = _segments(model, ids, [17, 1, 22], _noise_state(model, 2))
            results[on] = torch.cat([o.logits for o in outputs], 1), state
        _assert_kernels_ran(model_type, kernel_calls())
        (logits, state), (logits_ref, state_ref) = results[True], results[False]
        _assert_close(logits, logits_ref, torch.float32, f"{transform.method} logits")
        for a, b in zip(state.recurrent_states, state_ref.recurrent_states):
            _assert_close(a, b, torch.float32, f"{transform.method} recurrent state")
    scale = torch.tensor(0.7, requires_grad=True)
    for mixer in mixers:
        set_delta_transform(mixer, ScaleDelta(scale))

    def loss():
        outputs, _ = _segments(model, ids, [17, 23], _noise_state(model, 2))
        return sum(o.loss for o in outputs)

    _compare_gradients(model, loss, torch.float32, extra_leaves=(scale,))
    _assert_kernels_ran(model_type, kernel_calls(), backward=True)
