"""Effective remembrance and state norms by position."""

import json

import pytest
import torch

import hf_longssm as hl
from hf_longssm import evaluation
from tests.utils import tiny_model


@pytest.mark.parametrize("model_type", ["mamba", "mamba2"])
def test_effective_remembrance_equals_direct_computation(model_type):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (2, 40))
    res = evaluation.effective_remembrance(model, ids, T=40, ts=[0, 5, 30], segment_length=16)
    assert res[0] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        q = torch.softmax(model(ids).logits[:, -1], -1)
        for t in (5, 30):
            q_t = torch.softmax(model(ids[:, t:]).logits[:, -1], -1)
            direct = 0.5 * (q - q_t).abs().sum(-1).mean().item()
            assert res[t] == pytest.approx(direct, abs=1e-5)
            assert 0.0 <= res[t] <= 1.0
    assert res[5] > 0


def test_state_norms_by_position_equal_the_carried_state_norms():
    model = tiny_model("mamba2").eval()
    ids = torch.randint(0, 64, (2, 50))
    norms = evaluation.state_norms_by_position(model, ids, segment_length=16)
    assert norms["positions"] == [16, 32, 48, 50] and len(norms["norms"][0]) == 2
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :32])
    assert norms["norms"][1] == pytest.approx(state.norms().tolist(), rel=1e-5)
    json.dumps(norms)


def test_effective_remembrance_refuses_input_shorter_than_T():
    model = tiny_model("mamba2").eval()
    with pytest.raises(ValueError, match="fewer than T"):
        evaluation.effective_remembrance(model, torch.randint(0, 64, (2, 50)), T=60, ts=[0])
