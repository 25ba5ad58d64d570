"""xLSTM: mLSTM layers carrying three accumulating states per head (the matrix memory C, the normalizer n, the
stabilizer m). Segments with the carried state reproduce one pass (float32, 1e-4) for logits, final states and
gradients; one-token decoding continues from `to_cache()`; every state init trains."""

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from hf_longssm.modeling import cache_argument, state_kinds
from tests.utils import run_segments


def tiny_xlstm(seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM, xLSTMConfig

    # hidden 128 with factors 0.5 / 1: head widths 32 and 64, multiples of 64 across heads as xLSTMConfig rounds
    # them; the kernels in float32 (the released default computes them in bfloat16).
    settings = dict(
        vocab_size=64, hidden_size=128, num_hidden_layers=2, num_heads=2, chunk_size=16,
        autocast_kernel_dtype="float32", pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(xLSTMConfig(**{**settings, **overrides})).float()


def test_each_layer_carries_c_n_m():
    model = tiny_xlstm()
    assert [kind.name for kind in state_kinds(model.config)] == ["c_states", "n_states", "m_states"]
    state = hl.CarriedState.zeros(model, 3)
    assert state.accumulating_names == ["c_states", "n_states", "m_states"] and state.window_names == []
    assert [tuple(state.states[k][0].shape) for k in state.states] == [(3, 2, 32, 64), (3, 2, 32), (3, 2, 1)]


# xLSTM's "train" mode reads whole chunks only (transformers refuses other lengths, in one pass too)
@pytest.mark.parametrize(("mode", "sizes"), [("inference", [13, 17, 20]), ("inference", [1, 31, 18]),
                                             ("train", [16, 32, 16])], ids=str)  # fmt: skip
def test_segments_reproduce_one_pass_logits_and_final_states(mode, sizes):
    model = tiny_xlstm(mode=mode).eval()
    length = sum(sizes)
    ids = torch.randint(1, 64, (2, length))
    with torch.no_grad():
        reference = model(ids).logits
        logits, state = run_segments(model, ids, sizes)
        _, one_pass = hl.forward_with_state(model, ids)
        halves = ((0, length // 2), (length // 2, length))
        restarted = torch.cat([hl.forward_with_state(model, ids[:, a:b])[0].logits for a, b in halves], 1)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(state.all_tensors, one_pass.all_tensors):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert (restarted - reference).abs().max() > 1e-2  # the carried state matters, so the comparison can fail


@pytest.mark.parametrize(("mode", "sizes"), [("inference", [11, 16, 13]), ("train", [16, 16, 16])], ids=str)
def test_gradients_through_attached_states_equal_one_pass(mode, sizes):
    model = tiny_xlstm(mode=mode).train()
    ids = torch.randint(1, 64, (2, 40 if mode == "inference" else 48))

    def grads(sizes):
        model.zero_grad()
        logits, _ = run_segments(model, ids, sizes)  # states stay attached between segments
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    one_pass, segmented = grads([ids.shape[1]]), grads(sizes)
    assert one_pass.keys() == segmented.keys() and len(one_pass) > 10
    scale = max(g.abs().max() for g in one_pass.values())
    for name, grad in one_pass.items():
        torch.testing.assert_close(segmented[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_one_token_decoding_continues_from_to_cache():
    model = tiny_xlstm().eval()
    ids = torch.randint(1, 64, (1, 24))
    with torch.no_grad():
        reference = model(ids).logits[:, -3:]
        _, state = hl.forward_with_state(model, ids[:, :-3])
        cache, steps = state.to_cache(), []
        for t in range(21, 24):
            steps.append(model(ids[:, t : t + 1], use_cache=True, **{cache_argument(model): cache}).logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), reference, rtol=1e-4, atol=1e-4)


def test_a_reset_row_restarts_and_a_file_round_trips(tmp_path):
    model = tiny_xlstm().eval()
    ids = torch.randint(1, 64, (2, 30))
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :20])
        reset = state.reset(torch.tensor([True, False]))
        out, _ = hl.forward_with_state(model, ids[:, 20:], reset)
        fresh, _ = hl.forward_with_state(model, ids[:1, 20:])
        kept, _ = hl.forward_with_state(model, ids[1:, 20:], state.permute([1]))
    torch.testing.assert_close(out.logits[:1], fresh.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits[1:], kept.logits, rtol=1e-5, atol=1e-5)
    loaded = hl.CarriedState.from_state_dict(state.state_dict(), model.config)
    assert list(loaded.states) == ["c_states", "n_states", "m_states"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.all_tensors, state.all_tensors))


@pytest.mark.parametrize("state_init", ["random_noise", "fitted_noise", "state_passing", "tbtt"])
def test_every_state_init_trains_an_xlstm(tmp_path, state_init):
    model = tiny_xlstm(mode="train")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    documents = Dataset.from_dict({"input_ids": [[1 + (d * 7 + i) % 60 for i in range(90)] for d in range(8)]})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path), state_init=state_init, segment_length=16, per_device_train_batch_size=2,
        max_steps=3, learning_rate=1e-3, fitted_noise_warmup_steps=1, use_cpu=True, report_to=[], logging_steps=1,
    )  # fmt: skip
    trainer = hl.StatePassingTrainer(model, args, train_dataset=documents)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    if state_init == "fitted_noise":  # statistics per kind and layer: C, n and m of both layers
        assert trainer.intervention.fitted_stats.num_layers == 3 * 2


def test_the_lm_eval_adapter_scores_and_generates_from_the_carried_state():
    """transformers' generate() takes no xLSTM cache: generate_until decodes greedily through the carried state and
    gives what generate() gives re-reading the whole sequence; loglikelihood equals one pass."""
    from lm_eval.api.instance import Instance

    from hf_longssm.evaluation.harness import LongSSMLM
    from hf_longssm.tokenization import byte_tokenizer

    model = tiny_xlstm(vocab_size=257).eval()
    ours = LongSSMLM(model, tokenizer=byte_tokenizer(), segment_length=20)
    prompt = "Now is the winter of our discontent made glorious summer by this sun of York."
    ascii_only = {"suppress_tokens": list(range(129, 257)), "do_sample": False}
    ids = torch.tensor([ours.tok_encode(prompt)])
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=12, pad_token_id=0, **ascii_only)[0, ids.shape[1] :]
        one_pass = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None]).sum().item()
    request = Instance("generate_until", {}, (prompt, {"until": [], "max_gen_toks": 12, **ascii_only}), 0)
    [text] = ours.generate_until([request], disable_tqdm=True)
    assert text == ours.tokenizer.decode(expected.tolist(), skip_special_tokens=True).split("<eos>")[0]
    [(score, _)] = ours.loglikelihood([Instance("loglikelihood", {}, (prompt[:1], prompt[1:]), 0)], disable_tqdm=True)
    assert score == pytest.approx(one_pass, abs=1e-3)


def test_bfloat16_weights_run_from_a_float32_state_and_bad_modes_are_refused():
    model = tiny_xlstm(autocast_kernel_dtype="bfloat16").to(torch.bfloat16).eval()
    ids = torch.randint(1, 64, (2, 40))
    with torch.no_grad():
        reference = model(ids).logits.float()
        logits, state = run_segments(model, ids, [16, 24])
    assert state.states["c_states"][0].dtype == torch.float32
    # bfloat16 throughout: the carried state rounds at each boundary as transformers' own bf16 cache would
    assert (logits.float() - reference).abs().max() / reference.abs().max() < 0.05
    train = tiny_xlstm(mode="train")
    with pytest.raises(ValueError, match="reads whole chunks of 16 tokens; this segment has 20"):
        hl.forward_with_state(train, torch.randint(1, 64, (1, 20)))
    train.config.return_last_states = False
    with pytest.raises(ValueError, match="returns no final states"):
        hl.forward_with_state(train, torch.randint(1, 64, (1, 16)))
