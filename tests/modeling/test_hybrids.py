"""Hybrids (Mamba-2 layers with attention layers): segments with the carried state reproduce one pass (float32,
1e-4) for logits, final states and gradients; the attention policies keep what they say; resets, checkpoints and
`generate` from `to_cache()`."""

import pytest
import torch

import hf_longssm as hl
from hf_longssm.modeling import attention_layers, ssm_layers
from tests.utils import HYBRID_TYPES, run_segments, tiny_hybrid


SIZES = [[13, 17, 20], [1, 31, 18]]  # not multiples of the chunk size (16); a one-token segment


def full_state(model, batch: int, **kwargs) -> hl.CarriedState:
    return hl.CarriedState.zeros(model, batch, attention_state="full", **kwargs)


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
@pytest.mark.parametrize("sizes", SIZES, ids=str)
def test_segments_reproduce_one_pass_logits_and_final_states(model_type, sizes):
    model = tiny_hybrid(model_type).eval()
    assert ssm_layers(model.config) and attention_layers(model.config)  # both kinds present
    ids = torch.randint(1, 64, (2, 50))
    with torch.no_grad():
        reference = model(ids).logits
        logits, state = run_segments(model, ids, sizes, full_state(model, 2))
        _, one_pass = hl.forward_with_state(model, ids, full_state(model, 2))
        without_state, _ = zip(*[hl.forward_with_state(model, ids[:, a:b]) for a, b in ((0, 25), (25, 50))])
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(state.all_tensors, one_pass.all_tensors):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(state.keys + state.values, one_pass.keys + one_pass.values):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert state.position == 50 and state.num_keys == 50
    # Sensitivity: without the carried state the second half is far off, so the comparison above can fail.
    assert (torch.cat([o.logits for o in without_state], 1) - reference).abs().max() > 1e-2


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_gradients_through_attached_states_equal_one_pass(model_type):
    model = tiny_hybrid(model_type).train()
    ids = torch.randint(1, 64, (2, 40))

    def grads(sizes):
        model.zero_grad()
        logits, _ = run_segments(model, ids, sizes, full_state(model, 2))  # states stay attached between segments
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    one_pass, segmented = grads([40]), grads([11, 16, 13])
    assert one_pass.keys() == segmented.keys() and len(one_pass) > 10
    for name, grad in one_pass.items():
        torch.testing.assert_close(segmented[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_attention_policies_keep_what_they_say(model_type):
    model = tiny_hybrid(model_type).eval()
    ids = torch.randint(1, 64, (2, 48))
    with torch.no_grad():
        reference = model(ids).logits
        # a window longer than the input keeps everything: one pass again
        logits, wide = run_segments(model, ids, [16, 16, 16], hl.CarriedState.zeros(model, 2, attention_window=64))
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
        _, window = run_segments(model, ids, [16, 16, 16], hl.CarriedState.zeros(model, 2, attention_window=20))
        _, default = run_segments(model, ids, [16, 16, 16], hl.CarriedState.zeros(model, 2))
        none_logits, none = run_segments(
            model, ids, [16, 16, 16], hl.CarriedState.zeros(model, 2, attention_state="none")
        )
    assert (wide.num_keys, window.num_keys, default.num_keys, none.num_keys) == (48, 20, 16, 0)  # default: a segment
    assert window.position == default.position == none.position == 48
    torch.testing.assert_close(window.keys[0], wide.keys[0][:, :, -20:])  # the last 20, rotated where they were
    assert (none_logits[:, 16:] - reference[:, 16:]).abs().max() > 1e-3  # attention saw its segment only


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_a_reset_row_restarts_its_document_the_other_row_goes_on(model_type):
    model = tiny_hybrid(model_type).eval()
    ids = torch.randint(1, 64, (2, 40))
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :24], full_state(model, 2))
        out, _ = hl.forward_with_state(model, ids[:, 24:], state.reset(torch.tensor([True, False])))
        fresh, _ = hl.forward_with_state(model, ids[:1, 24:], full_state(model, 1))
        reference = model(ids[1:]).logits[:, 24:]
    torch.testing.assert_close(out.logits[:1], fresh.logits, rtol=1e-4, atol=1e-4)  # masked keys, zero SSM state
    torch.testing.assert_close(out.logits[1:], reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_state_dict_round_trip_and_permute(model_type):
    model = tiny_hybrid(model_type).eval()
    ids = torch.randint(1, 64, (3, 20))
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids, hl.CarriedState.zeros(model, 3))
    state = state.reset(torch.tensor([False, True, False]))
    loaded = hl.CarriedState.from_state_dict(state.state_dict(), model.config)
    assert loaded.position == 20 and loaded.key_valid.tolist() == state.key_valid.tolist()
    for ours, theirs in zip(loaded.keys + loaded.all_tensors, state.keys + state.all_tensors):
        assert torch.equal(ours, theirs)
    swapped = state.permute([1, 0, 2])
    assert torch.equal(swapped.keys[0][0], state.keys[0][1]) and swapped.key_valid[0].tolist() == [False] * 20


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_to_cache_lets_generate_continue_the_prompt(model_type):
    model = tiny_hybrid(model_type).eval()
    prompt = torch.randint(1, 64, (1, 30))
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=6, do_sample=False)
        _, state = run_segments(model, prompt[:, :-1], [12, 17], full_state(model, 1))
        cache = state.to_cache()
        continued = model.generate(
            prompt, max_new_tokens=6, do_sample=False, **{hl.modeling.cache_argument(model): cache}
        )
    assert continued.tolist() == expected.tolist()
    _, windowed = run_segments(model, prompt, [12, 18], hl.CarriedState.zeros(model, 1))
    with pytest.raises(ValueError, match="attention_state='full'"):
        windowed.to_cache()


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_one_token_decoding_after_a_default_prefill_keeps_the_window(model_type):
    # The default window is the first segment's length, kept for every later segment (one-token ones included).
    model = tiny_hybrid(model_type).eval()
    ids = torch.randint(1, 64, (1, 32))

    def decode(state):
        out, state = hl.forward_with_state(model, ids[:, :24], state)
        steps = [out.logits]
        for t in range(24, 32):
            out, state = hl.forward_with_state(model, ids[:, t : t + 1], state)
            steps.append(out.logits)
        return torch.cat(steps, 1), state

    with torch.no_grad():
        reference = model(ids).logits
        default, state = decode(None)
        explicit, _ = decode(hl.CarriedState.zeros(model, 1, attention_window=24))
    assert state.attention_window == 24 and state.num_keys == 24  # not one key per one-token step
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    torch.testing.assert_close(default[:, :25], reference[:, :25], rtol=1e-4, atol=1e-4)  # all keys in the window


def test_a_saved_state_keeps_its_attention_policy_and_a_foreign_one_is_refused():
    model = tiny_hybrid("granitemoehybrid").eval()
    ids = torch.randint(1, 64, (2, 20))
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :16], full_state(model, 2))
    loaded = hl.CarriedState.from_state_dict(state.state_dict(), model.config)
    assert (loaded.attention_state, loaded.attention_window) == ("full", None)
    with torch.no_grad():
        _, after = hl.forward_with_state(model, ids[:, 16:], loaded)
    assert after.num_keys == 20
    windowed = hl.CarriedState.from_state_dict(state.state_dict(), model.config, attention_state="window")
    assert windowed.attention_state == "window"
    with pytest.raises(ValueError, match="Drop position_ids"):
        hl.forward_with_state(model, ids[:, 16:], state, position_ids=torch.arange(4)[None])
    other = tiny_hybrid("granitemoehybrid", num_key_value_heads=1).eval()
    with pytest.raises(ValueError, match="attention keys have 2 heads of 8 but the model's have 1 of 8"):
        hl.forward_with_state(other, ids[:, 16:], state)


def test_reentrant_checkpointing_of_nested_layers_is_refused_not_run_from_zero():
    # Zamba2's hybrid layers hold a checkpointed Mamba layer: a reentrant backward would replay it without the state.
    from tests.utils import enable_checkpointing

    model = tiny_hybrid("zamba2").train()
    ids = torch.randint(1, 64, (2, 20))
    enable_checkpointing(model)  # non-reentrant (transformers' default): exact
    out, _ = hl.forward_with_state(model, ids, shift_labels=ids)
    assert torch.isfinite(out.loss)
    enable_checkpointing(model, use_reentrant=True)
    with pytest.raises(ValueError, match="use_reentrant': False"):
        hl.forward_with_state(model, ids, shift_labels=ids)
