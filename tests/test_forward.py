"""forward_with_state: segments with a carried state reproduce one pass (fla-style chunked vs full); bad input;
the one prefill loop (`iter_segments`, `prefill`) and `eval_mode` that every evaluation uses."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hf_longssm as hl
from hf_longssm import evaluation
from hf_longssm.modeling import cache_argument, reference_scans
from hf_longssm.tokenization import byte_tokenizer
from tests.utils import MODEL_TYPES, enable_checkpointing, run_segments, tiny_model


SPLITS = {
    "4x19": [19, 19, 19, 19],
    "37-1-1-37": [37, 1, 1, 37],
    "1-75": [1, 75],
    "ones-then-rest": [1, 1, 1, 1, 72],
    "whole": [76],
}


_MODELS = {}


def _cached_model(model_type):
    if model_type not in _MODELS:
        _MODELS[model_type] = tiny_model(model_type).eval()
    return _MODELS[model_type]


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
    reference = hl.CarriedState.from_cache(getattr(one_pass, cache_argument(model)))
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
def test_gradient_checkpointing_is_exact_with_detached_state(model_type):
    ids = torch.randint(0, 64, (2, 40))

    def grads(checkpointing):
        model = tiny_model(model_type).train()
        if checkpointing:
            enable_checkpointing(model)
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


@pytest.mark.parametrize("model_type", ["mamba", "mamba2"])
def test_works_through_peft_and_ddp_style_wrappers(model_type):
    peft = pytest.importorskip("peft")
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (2, 30))
    with torch.no_grad():
        expected = model(ids).logits
    targets = list(hl.SUPPORTED_ARCHITECTURES[model_type].lora_target_modules)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():
        lora_full = wrapped(input_ids=ids).logits
        out_a, state = hl.forward_with_state(wrapped, ids[:, :11])
        out_b, _ = hl.forward_with_state(wrapped, ids[:, 11:], state)
    assert (lora_full - expected).abs().max() > 1e-4  # LoRA is active ...
    torch.testing.assert_close(torch.cat([out_a.logits, out_b.logits], 1), lora_full, atol=1e-4, rtol=1e-4)

    class Wrapper(torch.nn.Module):  # what DDP / accelerate look like: the model sits in `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    with torch.no_grad():
        out, _ = hl.forward_with_state(Wrapper(model), ids)  # get_peft_model injected LoRA into `model` itself
    torch.testing.assert_close(out.logits, lora_full, atol=1e-4, rtol=1e-4)


def test_mismatched_state_is_refused_with_a_clear_message():
    model = tiny_model("mamba2")
    ids = torch.randint(0, 64, (2, 8))
    with pytest.raises(ValueError, match="batch size 3 but input_ids has 2 rows"):
        hl.forward_with_state(model, ids, hl.CarriedState.zeros(model, 3))
    other = tiny_model("mamba2", num_hidden_layers=3)
    with pytest.raises(ValueError, match="3 layers but the model has 2"):
        hl.forward_with_state(model, ids, hl.CarriedState.zeros(other, 2))
    with pytest.raises(ValueError, match="state.to\\(dtype"):
        hl.forward_with_state(model, ids, hl.CarriedState.zeros(model, 2).to(dtype=torch.float64))
    mamba1_state = hl.CarriedState.zeros(tiny_model("mamba"), 2)
    with pytest.raises(ValueError, match="The state is a mamba model.s, this model is mamba2"):
        hl.forward_with_state(model, ids, mamba1_state)


def test_padding_inside_a_segment_is_refused():
    model = tiny_model("mamba")
    ids = torch.randint(0, 64, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    out, _ = hl.forward_with_state(model, ids, attention_mask=mask)  # all ones is fine
    mask[1, -2:] = 0
    with pytest.raises(ValueError, match="padding inside a carried segment"):
        hl.forward_with_state(model, ids, attention_mask=mask)


def test_checkpointing_with_a_state_that_needs_grad_is_refused():
    model = tiny_model("mamba2").train()
    enable_checkpointing(model)
    ids = torch.randint(0, 64, (1, 8))
    _, state = hl.forward_with_state(model, ids)
    with pytest.raises(ValueError, match="activation_checkpointing=False"):
        hl.forward_with_state(model, ids, state)  # not detached
    hl.forward_with_state(model, ids, state.detach())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bare_models_without_lm_head(model_type):
    model = tiny_model(model_type).eval()
    backbone = model.backbone
    ids = torch.randint(0, 64, (2, 30))
    with torch.no_grad():
        full = backbone(ids).last_hidden_state
        a, state = hl.forward_with_state(backbone, ids[:, :12])
        b, _ = hl.forward_with_state(backbone, ids[:, 12:], state)
    torch.testing.assert_close(torch.cat([a.last_hidden_state, b.last_hidden_state], 1), full, atol=1e-4, rtol=1e-4)


def test_iter_segments_covers_the_input_and_carries_the_state():
    model = tiny_model("mamba2").eval()
    ids = torch.randint(1, 64, (2, 23))
    with torch.no_grad():
        spans = [(start, end) for start, end, _, _ in hl.iter_segments(model, ids, 10)]
        last, state = hl.prefill(model, ids, 10)
        one_pass, one_pass_state = hl.forward_with_state(model, ids)
    assert spans == [(0, 10), (10, 20), (20, 23)]
    torch.testing.assert_close(last.logits, one_pass.logits[:, 20:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state.recurrent_states[0], one_pass_state.recurrent_states[0], atol=1e-5, rtol=1e-5)


def test_prefill_refuses_empty_input_and_zero_segment_length():
    model = tiny_model("mamba2")
    with pytest.raises(ValueError, match="at least one token"):
        hl.prefill(model, torch.zeros(1, 0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="segment_length must be >= 1"):
        hl.prefill(model, torch.ones(1, 4, dtype=torch.long), 0)


def test_eval_mode_restores_the_callers_mode_even_on_error():
    model = tiny_model("mamba").train()
    with pytest.raises(RuntimeError):
        with hl.eval_mode(model):
            assert not model.training
            raise RuntimeError("boom")
    assert model.training


@pytest.mark.parametrize(
    "run",
    [
        lambda m, ids: evaluation.position_perplexity(m, ids, segment_length=8),
        lambda m, ids: evaluation.restarted_position_nll(m, ids, window=8),
        lambda m, ids: evaluation.effective_remembrance(m, ids, T=20, ts=[0, 4], segment_length=8),
        lambda m, ids: evaluation.state_norms_by_position(m, ids, segment_length=8),
        lambda m, ids: evaluation.passkey_retrieval(
            m, byte_tokenizer(), lengths=[300], depths=[0.5], num_trials=1, segment_length=128
        ),
    ],
    ids=["position_perplexity", "restarted_position_nll", "effective_remembrance", "state_norms", "passkey"],
)
def test_every_evaluation_leaves_a_training_model_in_training_mode(run):
    model = tiny_model("mamba2", vocab_size=257).train()
    run(model, torch.randint(1, 64, (2, 24)))
    assert model.training
