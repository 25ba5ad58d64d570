"""Evaluation: position-wise NLL, passkey prompts and scoring, effective remembrance, memory."""

import json
import subprocess
import sys

import pytest
import torch

import hf_longssm as hl
from hf_longssm import evaluation
from hf_longssm.evaluation import passkey as passkey_module
from hf_longssm.tokenization import ByteTokenizer

from .utils import MODEL_TYPES, tiny_model


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("segment_length", [1, 7, 16, 200])
def test_position_nll_equals_one_pass(model_type, segment_length):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (3, 70))
    result = evaluation.position_perplexity(model, ids, segment_length=segment_length)
    with torch.no_grad():
        logits = model(ids).logits
    direct = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].mean(0)
    assert result.nll.shape == (69,)
    assert (result.nll - direct).abs().max().item() < 1e-4
    buckets = result.perplexity([(0, 10), (10, 69)])
    assert abs(buckets[1]["nll"] - direct[10:].double().mean().item()) < 1e-5
    assert [(b["start"], b["end"]) for b in result.perplexity()][-1] == (64, 69)


def test_position_perplexity_memory_grows_sublinearly():
    script = """
import resource, sys, torch
sys.path.insert(0, ".")
from tests.utils import tiny_model
from hf_longssm import evaluation
model = tiny_model("mamba2").eval()
length = int(sys.argv[1])
ids = torch.randint(0, 64, (1, length))
evaluation.position_perplexity(model, ids[:, :2048], segment_length=1024)  # warm up allocator and kernels
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
evaluation.position_perplexity(model, ids, segment_length=1024)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""
    growth = {}
    for length in (8192, 65536):
        out = subprocess.run([sys.executable, "-c", script, str(length)], capture_output=True, text=True, check=True)
        growth[length] = int(out.stdout.strip().splitlines()[-1])  # KiB above the warmed-up peak
    # 8x the tokens: the extra peak must stay far below 8x (it is the input and the per-position sums only).
    assert growth[65536] < 2 * growth[8192] + 8 * 1024, growth


def test_passkey_prompt_has_exact_length_and_key_at_depth():
    tok = ByteTokenizer()
    for length in (300, 1000):
        for depth in (0.0, 0.5, 1.0):
            ids, key_at = evaluation.build_passkey_prompt(tok, length, depth, "48213")
            assert len(ids) == length
            text = tok.decode(ids)
            assert text[key_at:].startswith("The pass key is 48213")
            head = len(tok(passkey_module.TASK)["input_ids"])
            key_line = len(tok("The pass key is 48213. Remember it. 48213 is the pass key. ")["input_ids"])
            filler = length - head - key_line - len(tok(passkey_module.QUESTION)["input_ids"])
            assert abs((key_at - head) / filler - depth) <= 0.01


def test_passkey_scoring_with_models_stubbed_right_and_wrong(monkeypatch):
    tok = ByteTokenizer()
    model = tiny_model("mamba2", vocab_size=257)
    keys = []

    def answer(right):
        def fake(model_, state, first_token, max_new_tokens):
            assert state.batch_size == 1  # the prefill ran and carried a state
            key = keys[-1]
            return tok(" " + (key if right else "00000"))["input_ids"]

        return fake

    real_build = evaluation.build_passkey_prompt

    def spy(tokenizer, length, depth, passkey):
        keys.append(passkey)
        return real_build(tokenizer, length, depth, passkey)

    monkeypatch.setattr(passkey_module, "build_passkey_prompt", spy)
    monkeypatch.setattr(passkey_module, "_greedy_from_state", answer(True))
    right = evaluation.passkey_retrieval(model, tok, lengths=[200, 400], depths=[0.0, 1.0], num_trials=2)
    monkeypatch.setattr(passkey_module, "_greedy_from_state", answer(False))
    wrong = evaluation.passkey_retrieval(model, tok, lengths=[200, 400], depths=[0.0, 1.0], num_trials=2)
    assert [r["accuracy"] for r in right] == [1.0] * 4 and [r["accuracy"] for r in wrong] == [0.0] * 4
    assert len({k for k in keys}) > 4  # fresh random keys, reproducible by seed


def test_passkey_greedy_decoding_matches_generate():
    tok = ByteTokenizer()
    model = tiny_model("mamba", vocab_size=257).eval()
    ids, _ = evaluation.build_passkey_prompt(tok, 260, 0.5, "12345")
    ids = torch.tensor([ids])
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :-1])
        ours = passkey_module._greedy_from_state(model, state, ids[:, -1:], 5)
        theirs = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, -5:].tolist()
    assert ours == theirs


def test_passkey_bad_input():
    tok = ByteTokenizer()
    model = tiny_model("mamba2", vocab_size=257)
    with pytest.raises(ValueError, match="strictly increasing"):
        evaluation.passkey_retrieval(model, tok, lengths=[400, 200], depths=[0.5])
    with pytest.raises(ValueError, match="shorter than the task"):
        evaluation.build_passkey_prompt(tok, 50, 0.5, "12345")

    class NoDigits(ByteTokenizer):
        def decode(self, ids, **kwargs):
            return "".join(c for c in super().decode(ids) if not c.isdigit())

    with pytest.raises(ValueError, match="digits"):
        evaluation.build_passkey_prompt(NoDigits(), 500, 0.5, "12345")


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


def test_state_norms_by_position_and_bad_input():
    model = tiny_model("mamba2").eval()
    ids = torch.randint(0, 64, (2, 50))
    norms = evaluation.state_norms_by_position(model, ids, segment_length=16)
    assert norms["positions"] == [16, 32, 48, 50] and len(norms["norms"][0]) == 2
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :32])
    assert norms["norms"][1] == pytest.approx(state.norms().tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="fewer than T"):
        evaluation.effective_remembrance(model, ids, T=60, ts=[0])
    json.dumps(norms)
