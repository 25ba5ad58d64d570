"""The `evaluate` modules, offline: the same numbers as the plain functions, from a live model or a saved one."""

import pytest
import torch

from hf_longssm import evaluation
from hf_longssm.evaluation.modules import available_modules, load
from hf_longssm.tokenization import byte_tokenizer
from tests.utils import tiny_model


@pytest.fixture()
def saved_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_model("mamba2", vocab_size=257)
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return model, str(path)


def test_position_perplexity_module_matches_the_function(saved_model):
    model, _ = saved_model
    ids = torch.randint(1, 257, (2, 40))
    result = load("position_perplexity").compute(input_ids=ids.tolist(), model=model, segment_length=16)
    direct = evaluation.position_perplexity(model, ids, segment_length=40)
    assert len(result["nll"]) == 39 and result["buckets"][-1]["end"] == 39
    assert max(abs(a - b) for a, b in zip(result["nll"], direct.nll.tolist())) < 1e-4


def test_position_perplexity_module_loads_a_saved_model_by_path(saved_model):
    model, path = saved_model
    ids = torch.randint(1, 257, (2, 40))
    loaded = load("position_perplexity").compute(input_ids=ids.tolist(), model_id=path, segment_length=7)
    direct = evaluation.position_perplexity(model, ids, segment_length=40)
    assert max(abs(a - b) for a, b in zip(loaded["nll"], direct.nll.tolist())) < 1e-4


def test_position_perplexity_module_refuses_rows_of_different_lengths(saved_model):
    model, _ = saved_model
    with pytest.raises(ValueError, match="same length \\(no padding\\); got lengths \\[3, 5\\]"):
        load("position_perplexity").compute(input_ids=[[1, 2, 3], [1, 2, 3, 4, 5]], model=model)


def test_passkey_module_uses_the_tokenizer_saved_with_the_model(saved_model):
    model, path = saved_model
    out = load("passkey_retrieval").compute(lengths=[200, 260], depths=[0.5], model_id=path, num_trials=1)
    direct = evaluation.passkey_retrieval(model, byte_tokenizer(), [200, 260], [0.5], num_trials=1)
    assert out["results"] == direct
    assert out["accuracy"] == sum(r["accuracy"] for r in direct) / 2


def test_the_shipped_modules_are_the_two_scripts():
    assert available_modules() == ["passkey_retrieval", "position_perplexity"]


def test_an_unknown_module_is_an_error_listing_the_available_ones():
    with pytest.raises(ValueError, match="available: \\['passkey_retrieval', 'position_perplexity'\\]"):
        load("bleu")


def test_evaluation_load_is_the_module_loader():
    assert evaluation.load is load
