"""Passkey retrieval: prompts of exact length, scoring, decoding from the carried state."""

import pytest
import torch

import hf_longssm as hl
from hf_longssm import evaluation
from hf_longssm.evaluation import passkey as passkey_module
from hf_longssm.tokenization import byte_tokenizer
from tests.utils import HYBRID_TYPES, tiny_hybrid, tiny_model


def test_passkey_prompt_has_exact_length_and_key_at_depth():
    tok = byte_tokenizer()
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
    tok = byte_tokenizer()
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
    monkeypatch.setattr(passkey_module, "greedy_from_state", answer(True))
    right = evaluation.passkey_retrieval(model, tok, lengths=[200, 400], depths=[0.0, 1.0], num_trials=2)
    monkeypatch.setattr(passkey_module, "greedy_from_state", answer(False))
    wrong = evaluation.passkey_retrieval(model, tok, lengths=[200, 400], depths=[0.0, 1.0], num_trials=2)
    assert [r["accuracy"] for r in right] == [1.0] * 4 and [r["accuracy"] for r in wrong] == [0.0] * 4
    assert len({k for k in keys}) > 4  # fresh random keys, reproducible by seed


def test_passkey_greedy_decoding_matches_generate():
    tok = byte_tokenizer()
    model = tiny_model("mamba", vocab_size=257).eval()
    ids, _ = evaluation.build_passkey_prompt(tok, 260, 0.5, "12345")
    ids = torch.tensor([ids])
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :-1])
        ours = passkey_module.greedy_from_state(model, state, ids[:, -1:], 5)
        theirs = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, -5:].tolist()
    assert ours == theirs


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_hybrid_greedy_decoding_through_the_carried_state_matches_generate(model_type):
    tok = byte_tokenizer()
    model = tiny_hybrid(model_type, vocab_size=257).eval()
    ids, _ = evaluation.build_passkey_prompt(tok, 240, 0.5, "12345")
    ids = torch.tensor([ids])
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :-1], hl.CarriedState.zeros(model, 1, attention_state="full"))
        ours = passkey_module.greedy_from_state(model, state, ids[:, -1:], 5)
        theirs = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, -5:].tolist()
    assert ours == theirs
    # the default policy decodes too, with a window of keys (results may differ from one pass, not the mechanics)
    [cell] = evaluation.passkey_retrieval(model, tok, [240], [0.5], num_trials=1, segment_length=64)
    assert cell["trials"] == 1 and cell["accuracy"] in (0.0, 1.0)


def test_passkey_bad_input():
    tok = byte_tokenizer()
    model = tiny_model("mamba2", vocab_size=257)
    with pytest.raises(ValueError, match="strictly increasing"):
        evaluation.passkey_retrieval(model, tok, lengths=[400, 200], depths=[0.5])
    with pytest.raises(ValueError, match="shorter than the task"):
        evaluation.build_passkey_prompt(tok, 50, 0.5, "12345")

    class NoDigits:
        """A tokenizer that loses digits on the way back."""

        def __call__(self, text, **kwargs):
            return tok(text, **kwargs)

        def decode(self, ids, **kwargs):
            return "".join(c for c in tok.decode(ids) if not c.isdigit())

    with pytest.raises(ValueError, match="digits"):
        evaluation.build_passkey_prompt(NoDigits(), 500, 0.5, "12345")


@pytest.mark.parametrize(
    ("answer", "right"),
    [(" 15306", True), ("15306.", True), (" 15306 is the key", True), (" 153067", False), (" 1530", False),
     ("the key 15306", False), ("", False)],
)  # fmt: skip
def test_only_the_exact_number_counts(answer, right):
    from hf_longssm.evaluation.lm_eval_tasks.builders import process_passkey
    from hf_longssm.evaluation.passkey import is_the_key

    assert is_the_key(answer, "15306") is right
    assert process_passkey({"target": "15306"}, [answer]) == {"acc": float(right)}
