"""The core guarantee: segments with a carried state reproduce one pass (fla-style chunked vs full)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_longssm as hl
from hf_longssm.modeling import reference_scans

from .utils import MODEL_TYPES, split_points, tiny_model


SPLITS = {
    "4x19": [19, 19, 19, 19],
    "37-1-1-37": [37, 1, 1, 37],
    "1-75": [1, 75],
    "ones-then-rest": [1, 1, 1, 1, 72],
    "whole": [76],
}


def run_segments(model, ids, sizes, state=None, **kwargs):
    logits = []
    for start, end in split_points(ids.shape[1], sizes):
        out, state = hl.forward_with_state(model, ids[:, start:end], state, **kwargs)
        logits.append(out.logits)
    return torch.cat(logits, dim=1), state


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("split", list(SPLITS), ids=list(SPLITS))
def test_segmented_logits_and_final_state_equal_one_pass(model_type, split):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (3, 76), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        one_pass = model(ids, use_cache=True)
        seg_logits, state = run_segments(model, ids, SPLITS[split])
    assert (seg_logits - one_pass.logits).abs().max().item() < 1e-4
    # Final states equal the ones transformers leaves in its own cache after one pass.
    reference = hl.CarriedState.from_cache(one_pass.cache_params)
    for ours, theirs in zip(state.recurrent_states, reference.recurrent_states):
        torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)
    for ours, theirs in zip(state.conv_states, reference.conv_states):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_torch_path_equals_step_by_step_reference(model_type):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (2, 41))
    state = hl.CarriedState.random_noise(model, 2, std=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, fast_state = hl.forward_with_state(model, ids, state)
        with reference_scans():
            ref, ref_state = hl.forward_with_state(model, ids, state)
    torch.testing.assert_close(fast.logits, ref.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_state.recurrent_states, ref_state.recurrent_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradients_from_detached_state_match_reference(model_type):
    """Per-segment gradients (TBTT: detached initial state) of the fast path equal the step-by-step reference."""
    model = tiny_model(model_type).train()
    ids = torch.randint(0, 64, (2, 50))
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :23])
    state = state.detach()

    def grads():
        model.zero_grad()
        out, final = hl.forward_with_state(model, ids[:, 23:-1], state, shift_labels=ids[:, 24:])
        (out.loss + final.recurrent_states[-1].square().mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads()
    with reference_scans():
        ref = grads()
    assert fast.keys() == ref.keys() and len(fast) > 5
    for name in fast:
        torch.testing.assert_close(fast[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradient_into_initial_state_matches_finite_difference(model_type):
    """Backpropagation through the carried state (full BPTT across segments) is right too."""
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (1, 20))
    state = hl.CarriedState.random_noise(model, 1, std=0.3, generator=torch.Generator().manual_seed(3))
    ssm = state.recurrent_states[0].clone().requires_grad_(True)
    probe = torch.randn(1, 20, 64)

    def f(s0):
        carried = hl.CarriedState(state.conv_states, [s0, *state.recurrent_states[1:]])
        return (hl.forward_with_state(model, ids, carried)[0].logits * probe).sum()

    f(ssm).backward()
    direction = torch.randn_like(ssm)
    direction /= direction.norm()
    eps = 1e-2  # the scans compute in float32 (as transformers' do), so central differences need a large step
    with torch.no_grad():
        numeric = (f(ssm.detach() + eps * direction) - f(ssm.detach() - eps * direction)) / (2 * eps)
    analytic = (ssm.grad * direction).sum()
    assert abs(analytic.item()) > 1e-3
    assert abs(analytic.item() - numeric.item()) < 1e-2 * max(1.0, abs(numeric.item()))
    # ... and equals the step-by-step reference's gradient exactly.
    fast_grad, ssm.grad = ssm.grad.clone(), None
    with reference_scans():
        f(ssm).backward()
    torch.testing.assert_close(fast_grad, ssm.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_segment_losses_average_to_one_pass_loss(model_type):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (2, 65))
    with torch.no_grad():
        full = torch.nn.functional.cross_entropy(model(ids[:, :64]).logits.flatten(0, 1), ids[:, 1:65].flatten())
        state, losses = None, []
        for start in range(0, 64, 16):
            out, state = hl.forward_with_state(
                model, ids[:, start : start + 16], state, shift_labels=ids[:, start + 1 : start + 17]
            )
            losses.append(out.loss)
    assert abs(torch.stack(losses).mean().item() - full.item()) < 1e-5


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_reset_rows_start_fresh_while_others_continue(model_type):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (3, 60))
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :30])
        out, _ = hl.forward_with_state(model, ids[:, 30:], state.reset(torch.tensor([True, False, True])))
        fresh = model(ids[:, 30:]).logits
        continued = model(ids).logits[:, 30:]
    torch.testing.assert_close(out.logits[[0, 2]], fresh[[0, 2]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits[1], continued[1], atol=1e-4, rtol=1e-4)
    assert (out.logits[1] - fresh[1]).abs().max() > 1e-3  # the carried state mattered


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_permute_reorders_rows(model_type):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (3, 40))
    index = torch.tensor([2, 0, 1])
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :20])
        out, final = hl.forward_with_state(model, ids[index, 20:], state.permute(index))
        ref, ref_final = hl.forward_with_state(model, ids[:, 20:], state)
    torch.testing.assert_close(out.logits, ref.logits[index])
    torch.testing.assert_close(final.recurrent_states[1], ref_final.recurrent_states[1][index])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_to_cache_then_transformers_decode_matches(model_type):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (2, 48))
    with torch.no_grad():
        full = model(ids).logits
        _, state = run_segments(model, ids[:, :40], [13, 27])
        cache = state.to_cache()
        steps = [model(ids[:, t : t + 1], cache_params=cache, use_cache=True).logits for t in range(40, 48)]
        # ... and back: the cache after decoding is a CarriedState that continues exactly.
        state_after = hl.CarriedState.from_cache(cache, model.config)
        _, expected = hl.forward_with_state(model, ids, None)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 40:48], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        state_after.recurrent_states[0].float(), expected.recurrent_states[0], atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_generate_continues_from_carried_state(model_type):
    model = tiny_model(model_type).eval()
    ids = torch.randint(1, 64, (1, 30))
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        out, state = hl.forward_with_state(model, ids[:, :-1])
        continued = model.generate(
            ids[:, -1:], cache_params=state.to_cache(), max_new_tokens=6, do_sample=False, pad_token_id=0
        )
    assert continued[0, 1:].tolist() == plain[0, 30:].tolist()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradient_checkpointing_is_exact_with_detached_state(model_type):
    ids = torch.randint(0, 64, (2, 40))

    def grads(checkpointing):
        model = tiny_model(model_type).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        _, state = hl.forward_with_state(model, ids[:, :20])
        out, _ = hl.forward_with_state(model, ids[:, 20:-1], state.detach(), shift_labels=ids[:, 21:])
        out.loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model_type=st.sampled_from(MODEL_TYPES),
    sizes=st.lists(st.integers(min_value=1, max_value=24), min_size=1, max_size=6),
    batch=st.integers(min_value=1, max_value=3),
)
def test_random_splits_property(model_type, sizes, batch):
    model = _cached_model(model_type)
    ids = torch.randint(0, 64, (batch, sum(sizes)), generator=torch.Generator().manual_seed(sum(sizes)))
    with torch.no_grad():
        seg, _ = run_segments(model, ids, sizes)
        full = model(ids).logits
    assert (seg - full).abs().max().item() < 1e-4


_MODELS = {}


def _cached_model(model_type):
    if model_type not in _MODELS:
        _MODELS[model_type] = tiny_model(model_type).eval()
    return _MODELS[model_type]
