"""CarriedState: constructors, noise, fitted statistics, checkpoints."""

import pytest
import torch

import hf_longssm as hl
from hf_longssm.modeling import cache_argument
from tests.utils import MODEL_TYPES, run_segments, tiny_model


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_constructors_shapes_and_noise(model_type):
    model = tiny_model(model_type)
    zeros = hl.CarriedState.zeros(model, 4)
    assert zeros.batch_size == 4 and zeros.num_layers == 2
    assert all(t.abs().sum() == 0 for t in zeros.recurrent_states + zeros.conv_states)
    noisy = hl.CarriedState.random_noise(model, 4, std=2.0, generator=torch.Generator().manual_seed(0))
    values = torch.cat([s.flatten() for s in noisy.recurrent_states])
    assert abs(values.std().item() - 2.0) < 0.1 and abs(values.mean().item()) < 0.1
    assert all(t.abs().sum() == 0 for t in noisy.conv_states)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_fitted_noise_statistics_match_the_states_they_were_fitted_on(model_type):
    model = tiny_model(model_type).eval()
    stats = hl.FittedNoiseStats(num_layers=2)
    finals = []
    with torch.no_grad():
        for seed in range(3):
            ids = torch.randint(0, 64, (4, 30), generator=torch.Generator().manual_seed(seed))
            _, state = hl.forward_with_state(model, ids)
            stats.update(state)
            finals.append(state)
    for layer in range(2):
        observed = torch.cat([s.recurrent_states[layer] for s in finals]).transpose(0, 1).flatten(1)  # (heads, ...)
        torch.testing.assert_close(stats.mean(layer), observed.mean(1), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(stats.std(layer), observed.std(1), atol=1e-5, rtol=1e-4)
    sampled = hl.CarriedState.fitted_noise(model, 2000, stats, generator=torch.Generator().manual_seed(0))
    per_head = sampled.recurrent_states[1].transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_head.mean(1), stats.mean(1), atol=0.1 * stats.std(1).max().item(), rtol=0)
    torch.testing.assert_close(per_head.std(1), stats.std(1), atol=0, rtol=0.1)
    restored = hl.FittedNoiseStats.from_state_dict(stats.state_dict())
    torch.testing.assert_close(restored.std(0), stats.std(0))


def test_state_dict_round_trip_detach_clone_and_norms():
    model = tiny_model("mamba2")
    state = hl.CarriedState.random_noise(model, 3, std=1.0)
    restored = hl.CarriedState.from_state_dict(state.state_dict(), model.config)
    for a, b in zip(state.recurrent_states + state.conv_states, restored.recurrent_states + restored.conv_states):
        assert torch.equal(a, b)
    norms = state.norms()
    assert norms.shape == (2,)
    expected = state.recurrent_states[0].flatten(1).norm(dim=1).mean()
    torch.testing.assert_close(norms[0], expected)
    clone = state.clone()
    assert clone.recurrent_states[0].data_ptr() != state.recurrent_states[0].data_ptr()
    reset = state.reset(torch.tensor([False, True, False]))
    assert reset.recurrent_states[0][1].abs().sum() == 0 and torch.equal(
        reset.recurrent_states[0][0], state.recurrent_states[0][0]
    )
    assert state.recurrent_states[0][1].abs().sum() > 0  # not in place


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
        steps = [
            model(ids[:, t : t + 1], use_cache=True, **{cache_argument(model): cache}).logits for t in range(40, 48)
        ]
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
            ids[:, -1:], max_new_tokens=6, do_sample=False, pad_token_id=0, **{cache_argument(model): state.to_cache()}
        )
    assert continued[0, 1:].tolist() == plain[0, 30:].tolist()
