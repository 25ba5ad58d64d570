"""Mixed precision: bf16 autocast over float32 weights, and bfloat16 weights, train every intervention on every family.

Before the carried state kept its dtypes, state passing and TBTT stopped at step 2 under `bf16=True`: the conv window
came back in bfloat16 and the next segment refused it.
"""

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from tests.utils import MODEL_TYPES, run_segments, tiny_model


METHODS = ["zero", "random_noise", "fitted_noise", "state_passing", "tbtt"]


def train(tmp_path, model, method, **overrides):
    documents = Dataset.from_dict({"input_ids": torch.randint(1, 64, (8, 160)).tolist()})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path / method),
        state_init=method,
        segment_length=16,
        per_device_train_batch_size=4,
        max_steps=4,
        fitted_noise_warmup_steps=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_drop_last=True,
        **overrides,
    )
    trainer = hl.StatePassingTrainer(model=model, args=args, train_dataset=documents)
    trainer.train()
    return trainer, [log["loss"] for log in trainer.state.log_history if "loss" in log]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bf16_autocast_over_float32_weights_trains_every_method(tmp_path, model_type, method):
    model = tiny_model(model_type)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, losses = train(tmp_path, model, method, bf16=True)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    carried = trainer.intervention.carried
    if method in ("state_passing", "tbtt"):
        assert carried.conv_states[0].dtype == torch.float32 and carried.recurrent_states[0].dtype == torch.float32
        assert carried.norms().min() > 0


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bfloat16_weights_train_with_a_carried_state(tmp_path, model_type):
    model = tiny_model(model_type).to(torch.bfloat16)
    trainer, losses = train(tmp_path, model, "tbtt")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    carried = trainer.intervention.carried
    assert carried.conv_states[0].dtype == torch.bfloat16 and carried.recurrent_states[0].dtype == torch.float32


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_segments_under_autocast_match_one_pass_under_autocast(model_type):
    model = tiny_model(model_type).eval()
    ids = torch.randint(1, 64, (2, 40))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        segmented, state = run_segments(model, ids, [13, 1, 26])
        one_pass, one_pass_state = hl.forward_with_state(model, ids)
    assert state.conv_states[0].dtype == torch.float32
    torch.testing.assert_close(segmented.float(), one_pass.logits.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(state.recurrent_states[0], one_pass_state.recurrent_states[0], atol=2e-2, rtol=2e-2)


def test_a_state_of_another_precision_is_refused_outside_autocast():
    model = tiny_model("mamba2")
    state = hl.CarriedState.zeros(model, 2).to(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        hl.forward_with_state(model, torch.randint(1, 64, (2, 8)), state)  # the autocast dtype is accepted
    with pytest.raises(ValueError, match="conv windows are torch.bfloat16 but the model runs in torch.float32"):
        hl.forward_with_state(model, torch.randint(1, 64, (2, 8)), state)
