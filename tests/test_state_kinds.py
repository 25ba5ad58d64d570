"""State kinds: what a family's stateful layers carry decides what every init, check and file does with it. LFM2's
short-conv layers carry a window alone; Gated DeltaNet layers a window and a matrix state."""

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from hf_longssm.modeling import state_kinds
from tests.utils import tiny_hybrid, tiny_model


def test_a_window_only_family_carries_its_windows_and_says_what_it_lacks():
    model = tiny_hybrid("lfm2")
    state = hl.CarriedState.zeros(model, 2)
    assert [kind.name for kind in state_kinds(model.config)] == ["conv_states"]
    assert list(state.states) == ["conv_states"] and state.window_names == ["conv_states"]
    assert state.accumulating_names == [] and state.noised_tensors() == []
    with pytest.raises(ValueError, match="carry only windows of recent inputs"):
        hl.CarriedState.random_noise(model, 2, std=1.0)
    with pytest.raises(AttributeError, match=r"lfm2's layers carry \['conv_states'\], not recurrent_states"):
        _ = state.recurrent_states
    _, final = hl.forward_with_state(model, torch.randint(1, 64, (2, 9)), state)
    assert final.norms().shape == (2,) and bool((final.norms() > 0).all())  # the windows' norms, per layer
    loaded = hl.CarriedState.from_state_dict(final.state_dict(), model.config)
    assert list(loaded.states) == ["conv_states"] and torch.equal(loaded.conv_states[1], final.conv_states[1])


def test_noise_inits_perturb_accumulating_states_and_leave_windows_at_zero():
    model = tiny_hybrid("qwen3_next")
    state = hl.CarriedState.random_noise(model, 2, std=0.5, generator=torch.Generator().manual_seed(0))
    assert state.window_names == ["conv_states"] and state.accumulating_names == ["recurrent_states"]
    assert all(float(t.abs().sum()) == 0 for t in state.conv_states)
    assert all(0.3 < float(t.std()) < 0.7 for t in state.recurrent_states)
    stats = hl.FittedNoiseStats(num_layers=len(state.noised_tensors()))
    stats.update(state)
    fitted = hl.CarriedState.fitted_noise(model, 3, stats, generator=torch.Generator().manual_seed(1))
    assert fitted.recurrent_states[0].shape[1:] == state.recurrent_states[0].shape[1:]  # per value head


def test_a_state_of_another_kind_of_layer_is_refused():
    lfm2, mamba = tiny_hybrid("lfm2"), tiny_model("mamba")
    keys = hl.CarriedState.zeros(lfm2, 1).keys  # the attention part fits: only the layers' kind is foreign
    foreign = hl.CarriedState(states={"recurrent_states": [torch.zeros(1, 32, 3)] * 2}, keys=keys, values=keys)
    with pytest.raises(ValueError, match=r"carries \['recurrent_states'\] per layer but this model's layers carry"):
        hl.forward_with_state(lfm2, torch.randint(1, 64, (1, 4)), foreign)
    with pytest.raises(ValueError, match="states do not carry across model families"):
        hl.forward_with_state(mamba, torch.randint(1, 64, (1, 4)), hl.CarriedState.zeros(lfm2, 1))


def test_noise_inits_are_refused_for_a_window_only_family(tmp_path):
    documents = Dataset.from_dict({"input_ids": [[1 + i % 60 for i in range(64)]] * 4})
    for state_init in ("random_noise", "fitted_noise"):
        args = hl.StatePassingConfig(
            output_dir=str(tmp_path), state_init=state_init, segment_length=16, use_cpu=True, report_to=[]
        )
        with pytest.raises(ValueError, match="carry only windows of recent inputs"):
            hl.StatePassingTrainer(tiny_hybrid("lfm2"), args, train_dataset=documents)


@pytest.mark.parametrize("model_type", ["qwen3_5_text", "lfm2"])
def test_training_free_extensions_are_refused_for_layers_without_a_delta(model_type):
    with pytest.raises(ValueError, match="has no Mamba layers"):
        hl.extend.delta_scale(tiny_hybrid(model_type), train_length=10, target_length=100)
