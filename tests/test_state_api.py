"""CarriedState operations, fitted-noise statistics, wrappers and bad input."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import hf_longssm as hl

from .utils import MODEL_TYPES, tiny_model


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


def test_unsupported_model_names_supported_types():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match=r"does not support model_type='gpt2'.*falcon_mamba.*mamba2"):
        hl.forward_with_state(gpt2, torch.randint(0, 32, (1, 4)))
    with pytest.raises(ValueError, match="does not support"):
        hl.CarriedState.zeros(gpt2, 1)


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
    with pytest.raises(ValueError, match="do not match the model"):
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
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, 64, (1, 8))
    _, state = hl.forward_with_state(model, ids)
    with pytest.raises(ValueError, match="gradient_checkpointing=False"):
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
