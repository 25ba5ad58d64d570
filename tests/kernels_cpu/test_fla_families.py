"""flash-linear-attention's families (the [fla] extra): GLA, RWKV-6, RWKV-7 and Gated DeltaNet.
Segments with the carried state reproduce one pass (float32, 1e-4) for logits, final states and gradients on
hf_longssm's torch path; fla's own Triton kernels (in Triton's interpreter) give what the torch path gives, the ops
from a carried state and the whole models; every state init trains; both post-train and evaluate from the command
line. In the kernels job because fla cannot be imported without Triton."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from hf_longssm.modeling import kernels, state_kinds
from hf_longssm.modeling.ops import dplr_chunked, dplr_ref, gla_chunked, gla_ref, rwkv6_chunked, rwkv6_ref
from tests.utils import run_segments

from .helpers import kernel_branch, relative_error, torch_path


pytestmark = pytest.mark.kernels_cpu
FAMILIES = ["gla", "rwkv6", "rwkv7", "gated_deltanet"]
# the kernel each family's layers call on the kernel branch (counted by the `kernel_calls` fixture)
FORWARD_KERNEL = {
    "gla": "chunk_gla_fwd",
    "rwkv6": "chunk_rwkv6_fwd",
    "rwkv7": "chunk_dplr_fwd",
    "gated_deltanet": "chunk_gated_delta_rule_fwd",
}


def tiny_fla(model_type: str, seed: int = 0, **overrides):
    builders = {"gla": tiny_gla, "rwkv6": tiny_rwkv6, "rwkv7": tiny_rwkv7, "gated_deltanet": tiny_gated_deltanet}
    return builders[model_type](seed, **overrides)


def tiny_rwkv6(seed: int = 0, **overrides):
    from fla.models import RWKV6Config, RWKV6ForCausalLM

    settings = dict(
        vocab_size=64, hidden_size=64, num_hidden_layers=2, num_heads=4, expand_k=0.5, expand_v=1.0,
        proj_low_rank_dim=8, gate_low_rank_dim=16, intermediate_size=128, pad_token_id=0, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = RWKV6ForCausalLM(RWKV6Config(**{**settings, **overrides})).float()
    with torch.no_grad():  # decays exp(-exp(-2)) = 0.87 per token, not fla's exp(-1): states that carry
        for layer in model.model.layers:
            layer.attn.w_proj.linear.lora[2].bias.fill_(-2.0)
    return model


def tiny_gated_deltanet(seed: int = 0, **overrides):
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    settings = dict(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, head_dim=16, num_heads=2, num_v_heads=4, expand_v=1.0,
        intermediate_size=64, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**{**settings, **overrides})).float()
    with torch.no_grad():  # A in [0.05, 1], not fla's [0, 16]: long-memory heads (as tests/utils.tiny_hybrid)
        for layer in model.model.layers:
            layer.attn.A_log.copy_(torch.empty_like(layer.attn.A_log).uniform_(0.05, 1.0).log())
    return model


def tiny_rwkv7(seed: int = 0, **overrides):
    from fla.models import RWKV7Config, RWKV7ForCausalLM

    ranks = dict(decay_low_rank_dim=16, gate_low_rank_dim=16, a_low_rank_dim=16, v_low_rank_dim=16)
    settings = dict(
        vocab_size=64, hidden_size=64, num_hidden_layers=2, head_dim=16, intermediate_size=128, **ranks,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = RWKV7ForCausalLM(RWKV7Config(**{**settings, **overrides})).float()
    with torch.no_grad():  # fla zeroes the output projections at init: then no layer's output (or state) matters
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "ffn.value.weight")):
                p.normal_(0, 0.05)
    return model


def tiny_gla(seed: int = 0, **overrides):
    from fla.models import GLAConfig, GLAForCausalLM

    settings = dict(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=2, expand_k=0.5, expand_v=1.0,
        intermediate_size=64, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GLAForCausalLM(GLAConfig(**{**settings, **overrides})).float()
    with torch.no_grad():  # slower gates than fla's initialisation, so states carry information across segments
        for layer in model.model.layers:
            layer.attn.gk_proj[1].bias.add_(4.0)
    return model


def _op_inputs(batch, seq_len, heads, k_dim, v_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g).requires_grad_()  # noqa: E731
    gk = (torch.nn.functional.logsigmoid(torch.randn(batch, seq_len, heads, k_dim, generator=g)) / 4).requires_grad_()
    return dict(
        q=randn(batch, seq_len, heads, k_dim), k=randn(batch, seq_len, heads, k_dim),
        v=randn(batch, seq_len, heads, v_dim), gk=gk, initial_state=randn(batch, heads, k_dim, v_dim),
    )  # fmt: skip


@pytest.mark.parametrize("seq_len", [1, 37, 70])
def test_chunked_torch_path_equals_the_reference_and_fla_naive(seq_len):
    from fla.ops.gla.naive import naive_recurrent_gla

    inputs = _op_inputs(2, seq_len, 3, 8, 6)
    out, final = gla_chunked(**inputs, chunk_size=16)
    ref_out, ref_final = gla_ref(**inputs)
    fla_out, fla_final = naive_recurrent_gla(*(inputs[k] for k in ("q", "k", "v", "gk", "initial_state")), True)
    for ours, theirs in ((out, ref_out), (final, ref_final), (ref_out, fla_out), (ref_final, fla_final)):
        assert relative_error(ours.detach(), theirs.detach()) < 1e-5
    grads = torch.autograd.grad(out.square().sum() + final.square().sum(), list(inputs.values()))
    ref_grads = torch.autograd.grad(ref_out.square().sum() + ref_final.square().sum(), list(inputs.values()))
    for name, ours, theirs in zip(inputs, grads, ref_grads):
        assert relative_error(ours, theirs) < 1e-5, name


@pytest.mark.parametrize("seq_len", [1, 37, 70])
def test_fla_chunk_gla_from_a_carried_state_equals_the_torch_path(kernel_calls, seq_len):
    inputs = _op_inputs(2, seq_len, 2, 16, 16)
    results, grads = {}, {}
    for on in (True, False):
        with kernel_branch(on) if on else torch_path():
            o, final = kernels.gla_with_state(**inputs)
        results[on] = (o.detach(), final.detach())
        grads[on] = torch.autograd.grad(o.square().sum() + final.square().sum(), list(inputs.values()))
    calls = kernel_calls()
    assert calls["chunk_gla_fwd"] > 0 and calls["chunk_gla_bwd"] > 0, calls
    for ours, theirs in zip(results[True], results[False]):
        assert relative_error(ours, theirs) < 2e-5
    for name, ours, theirs in zip(inputs, grads[True], grads[False]):
        assert relative_error(ours, theirs) < 1e-4, name


def _dplr_inputs(batch, seq_len, heads, k_dim, v_dim, seed=0):
    """RWKV-7's use: a = -kk, b = kk * a with kk unit vectors and a in (0, 1), log decays in (-0.607, 0)."""
    g = torch.Generator().manual_seed(seed)
    kk = torch.nn.functional.normalize(torch.randn(batch, seq_len, heads, k_dim, generator=g), dim=-1)
    mix = torch.rand(batch, seq_len, heads, k_dim, generator=g)
    leaf = lambda x: x.requires_grad_()  # noqa: E731
    return dict(
        q=leaf(torch.randn(batch, seq_len, heads, k_dim, generator=g)),
        k=leaf(0.3 * torch.randn(batch, seq_len, heads, k_dim, generator=g)),
        v=leaf(torch.randn(batch, seq_len, heads, v_dim, generator=g)),
        a=leaf(-kk), b=leaf(kk * mix), gk=leaf(-0.6065 * torch.rand(batch, seq_len, heads, k_dim, generator=g)),
        initial_state=leaf(torch.randn(batch, heads, k_dim, v_dim, generator=g)),
    )  # fmt: skip


@pytest.mark.parametrize("seq_len", [1, 37, 70])
def test_dplr_chunked_torch_path_equals_the_reference_and_fla_naive(seq_len):
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence

    inputs = _dplr_inputs(2, seq_len, 3, 8, 6)
    out, final = dplr_chunked(**inputs, scale=1.0)
    ref_out, ref_final = dplr_ref(**inputs, scale=1.0)
    names = ("q", "k", "v", "a", "b", "gk")
    fla_out, fla_final = dplr_recurrence(
        *(inputs[n].transpose(1, 2) * (8**0.5 if n == "q" else 1) for n in names), inputs["initial_state"]
    )  # fla's reference scales queries by k ** -0.5 itself
    fla_out = fla_out.transpose(1, 2)
    for ours, theirs in ((out, ref_out), (final, ref_final), (ref_out, fla_out), (ref_final, fla_final)):
        assert relative_error(ours.detach(), theirs.detach()) < 1e-5
    grads = torch.autograd.grad(out.square().sum() + final.square().sum(), list(inputs.values()))
    ref_grads = torch.autograd.grad(ref_out.square().sum() + ref_final.square().sum(), list(inputs.values()))
    for name, ours, theirs in zip(inputs, grads, ref_grads):
        assert relative_error(ours, theirs) < 1e-5, name


@pytest.mark.parametrize("seq_len", [1, 37, 70])
def test_fla_chunk_dplr_delta_rule_from_a_carried_state_equals_the_torch_path(kernel_calls, seq_len):
    inputs = _dplr_inputs(2, seq_len, 2, 16, 16)
    results, grads = {}, {}
    for on in (True, False):
        with kernel_branch(on) if on else torch_path():
            o, final = kernels.dplr_delta_rule_with_state(**inputs, scale=1.0)
        results[on] = (o.detach(), final.detach())
        grads[on] = torch.autograd.grad(o.square().sum() + final.square().sum(), list(inputs.values()))
    calls = kernel_calls()
    assert calls["chunk_dplr_fwd"] > 0 and calls["chunk_dplr_bwd_dhu"] > 0, calls
    for ours, theirs in zip(results[True], results[False]):
        assert relative_error(ours, theirs) < 2e-5
    for name, ours, theirs in zip(inputs, grads[True], grads[False]):
        assert relative_error(ours, theirs) < 1e-4, name


@pytest.mark.parametrize("seq_len", [1, 37, 70])
def test_rwkv6_chunked_torch_path_equals_the_reference_and_fla_naive(seq_len):
    from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6

    inputs = _op_inputs(2, seq_len, 3, 8, 6)
    inputs["u"] = torch.randn(3, 8).requires_grad_()
    args = {"q": inputs["q"], "k": inputs["k"], "v": inputs["v"], "w": inputs["gk"], "u": inputs["u"]}
    out, final = rwkv6_chunked(**args, initial_state=inputs["initial_state"], scale=1.0, chunk_size=16)
    ref_out, ref_final = rwkv6_ref(**args, initial_state=inputs["initial_state"], scale=1.0)
    fla_out, fla_final = naive_recurrent_rwkv6(
        *(args[n].transpose(1, 2) for n in ("q", "k", "v", "w")), args["u"], scale=1.0,
        initial_state=inputs["initial_state"], output_final_state=True,
    )  # fmt: skip
    for ours, theirs in (
        (out, ref_out),
        (final, ref_final),
        (ref_out, fla_out.transpose(1, 2)),
        (ref_final, fla_final),
    ):
        assert relative_error(ours.detach(), theirs.detach()) < 1e-5
    grads = torch.autograd.grad(out.square().sum() + final.square().sum(), list(inputs.values()))
    ref_grads = torch.autograd.grad(ref_out.square().sum() + ref_final.square().sum(), list(inputs.values()))
    for name, ours, theirs in zip(inputs, grads, ref_grads):
        assert relative_error(ours, theirs) < 1e-5, name


@pytest.mark.parametrize("seq_len", [1, 37, 70])
def test_fla_chunk_rwkv6_from_a_carried_state_equals_the_torch_path(kernel_calls, seq_len):
    inputs = _op_inputs(2, seq_len, 2, 16, 16)
    inputs["u"] = torch.randn(2, 16).requires_grad_()
    results, grads = {}, {}
    for on in (True, False):
        with kernel_branch(on) if on else torch_path():
            o, final = kernels.rwkv6_with_state(
                inputs["q"], inputs["k"], inputs["v"], inputs["gk"], inputs["u"], inputs["initial_state"], scale=1.0
            )
        results[on] = (o.detach(), final.detach())
        grads[on] = torch.autograd.grad(o.square().sum() + final.square().sum(), list(inputs.values()))
    calls = kernel_calls()
    assert calls["chunk_rwkv6_fwd"] > 0 and calls["chunk_rwkv6_bwd"] > 0, calls
    for ours, theirs in zip(results[True], results[False]):
        assert relative_error(ours, theirs) < 2e-5
    for name, ours, theirs in zip(inputs, grads[True], grads[False]):
        assert relative_error(ours, theirs) < 1e-4, name


def test_the_state_kinds_of_rwkv6_and_fla_gated_deltanet():
    rwkv6 = hl.CarriedState.zeros(tiny_rwkv6(), 3)
    assert rwkv6.accumulating_names == ["recurrent_states"]
    assert rwkv6.window_names == ["shift_states", "ffn_shift_states"]
    assert [tuple(t[0].shape) for t in rwkv6.states.values()] == [(3, 64), (3, 4, 8, 16), (3, 64)]
    gdn = hl.CarriedState.zeros(tiny_gated_deltanet(), 3)
    assert gdn.accumulating_names == ["recurrent_states"]
    assert gdn.window_names == ["q_conv_states", "k_conv_states", "v_conv_states"]
    assert [tuple(t[0].shape) for t in gdn.states.values()] == [(3, 32, 4), (3, 32, 4), (3, 64, 4), (3, 4, 16, 16)]


def test_each_rwkv7_layer_carries_two_token_shifts_and_one_matrix_per_head():
    model = tiny_rwkv7()
    assert [kind.name for kind in state_kinds(model.config)] == [
        "shift_states",
        "recurrent_states",
        "ffn_shift_states",
    ]
    state = hl.CarriedState.zeros(model, 3)
    assert state.accumulating_names == ["recurrent_states"]
    assert state.window_names == ["shift_states", "ffn_shift_states"]
    assert [tuple(t[0].shape) for t in state.states.values()] == [(3, 64), (3, 4, 16, 16), (3, 64)]


def test_each_layer_carries_one_v_by_k_matrix_per_head():
    model = tiny_gla()
    assert [kind.name for kind in state_kinds(model.config)] == ["recurrent_states"]
    state = hl.CarriedState.zeros(model, 3)
    assert state.accumulating_names == ["recurrent_states"] and state.window_names == []
    assert [tuple(t.shape) for t in state.states["recurrent_states"]] == [(3, 2, 16, 8)] * 2


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("sizes", [[13, 17, 20], [1, 31, 18]], ids=str)
def test_segments_reproduce_one_pass_logits_and_final_states(model_type, sizes):
    model = tiny_fla(model_type).eval()
    length = sum(sizes)
    ids = torch.randint(1, 64, (2, length))
    with torch_path(), torch.no_grad():
        reference = model(ids).logits
        logits, state = run_segments(model, ids, sizes)
        _, one_pass = hl.forward_with_state(model, ids)
        half = length // 2
        restarted = torch.cat([hl.forward_with_state(model, ids[:, :half])[0].logits,
                               hl.forward_with_state(model, ids[:, half:])[0].logits], 1)  # fmt: skip
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(state.all_tensors, one_pass.all_tensors):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # the carried state matters (1% of the logits' range at least), so the comparison can fail
    assert (restarted - reference).abs().max() > 1e-2 * reference.abs().max()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_gradients_through_attached_states_equal_one_pass(model_type):
    model = tiny_fla(model_type).train()
    ids = torch.randint(1, 64, (2, 40))

    def grads(sizes):
        model.zero_grad()
        logits, _ = run_segments(model, ids, sizes)  # states stay attached between segments
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with torch_path():
        one_pass, segmented = grads([40]), grads([11, 16, 13])
    assert one_pass.keys() == segmented.keys() and len(one_pass) > 10
    scale = max(g.abs().max() for g in one_pass.values())
    for name, grad in one_pass.items():
        torch.testing.assert_close(segmented[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_reset_row_restarts_its_document_the_other_row_goes_on(model_type):
    model = tiny_fla(model_type).eval()
    ids = torch.randint(1, 64, (2, 30))
    with torch_path(), torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :20])
        out, _ = hl.forward_with_state(model, ids[:, 20:], state.reset(torch.tensor([True, False])))
        fresh, _ = hl.forward_with_state(model, ids[:1, 20:])
        kept, _ = hl.forward_with_state(model, ids[1:, 20:], state.permute([1]))
    torch.testing.assert_close(out.logits[:1], fresh.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits[1:], kept.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_fla_model_on_its_kernels_equals_the_torch_path_segmented(kernel_calls, model_type):
    """fla's own forward end to end (its Triton layers, norms and MLPs; an unprepared model) against hf_longssm's
    torch path in segments with the carried state."""
    model = tiny_fla(model_type).eval()
    ids = torch.randint(1, 64, (2, 70))  # above 64 tokens fla's layer takes chunk_gla
    with kernel_branch(), torch.no_grad():
        fla_logits = model(ids).logits
    with torch_path(), torch.no_grad():
        logits, _ = run_segments(model, ids, [30, 40])
    assert kernel_calls()[FORWARD_KERNEL[model_type]] > 0
    assert relative_error(logits, fla_logits) < 1e-4


@pytest.mark.parametrize("model_type", FAMILIES)
def test_one_token_decoding_continues_from_to_cache_on_the_torch_path(model_type):
    model = tiny_fla(model_type).eval()
    ids = torch.randint(1, 64, (1, 24))
    with torch_path(), torch.no_grad():
        reference = model(ids).logits[:, -3:]
        _, state = hl.forward_with_state(model, ids[:, :-3])
        cache, steps = state.to_cache(), []
        assert cache.get_seq_length() == 21
        for t in range(21, 24):
            steps.append(model(ids[:, t : t + 1], use_cache=True, past_key_values=cache).logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_to_cache_continues_in_fla_own_decoding_on_its_kernels(model_type):
    """The carried state in fla's layout: fla's own one-token kernels (fused recurrent, token shift, short conv
    with a cache) continue from `to_cache()` as from fla's own prefill."""
    model = tiny_fla(model_type).eval()
    ids = torch.randint(1, 64, (1, 24))
    with torch_path(), torch.no_grad():
        reference = model(ids).logits[:, -3:]
        _, state = hl.forward_with_state(model, ids[:, :-3])
    with kernel_branch(), torch.no_grad():
        cache, steps = state.to_cache(), []
        for t in range(21, 24):
            steps.append(model(ids[:, t : t + 1], use_cache=True, past_key_values=cache).logits[:, -1])
    assert relative_error(torch.stack(steps, 1), reference) < 1e-4


@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_lm_eval_adapter_scores_and_generates_from_the_carried_state(model_type):
    """fla's generate() is not given hf_longssm's state: generate_until decodes greedily through the carried state and
    gives what generate() gives re-reading the whole sequence; loglikelihood equals one pass."""
    from lm_eval.api.instance import Instance

    from hf_longssm.evaluation.harness import LongSSMLM
    from hf_longssm.tokenization import byte_tokenizer

    model = hl.prepare_model(tiny_fla(model_type, vocab_size=257).eval())  # plain calls on the torch path too
    ours = LongSSMLM(model, tokenizer=byte_tokenizer(), segment_length=20)
    prompt = "Now is the winter of our discontent made glorious summer by this sun of York."
    ids = torch.tensor([ours.tok_encode(prompt)])
    with torch_path(), torch.no_grad():
        expected = []  # greedy decoding re-reading the whole sequence each step, ASCII only, up to EOS
        for _ in range(12):
            logits = model(torch.cat([ids, torch.tensor([expected], dtype=torch.long)], 1)).logits[0, -1]
            logits[129:] = float("-inf")
            expected.append(int(logits.argmax()))
            if expected[-1] == ours.eot_token_id:  # generation ends at EOS
                break
        one_pass = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None]).sum().item()
        request = (prompt, {"until": [], "max_gen_toks": 12, "suppress_tokens": list(range(129, 257))})
        [text] = ours.generate_until([Instance("generate_until", {}, request, 0)], disable_tqdm=True)
        scored = ours.loglikelihood([Instance("loglikelihood", {}, (prompt[:1], prompt[1:]), 0)], disable_tqdm=True)
    assert text == ours.tokenizer.decode(expected, skip_special_tokens=True)
    assert scored[0][0] == pytest.approx(one_pass, abs=1e-3)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_saved_model_loads_prepared_through_load_model_and_a_file_round_trips(tmp_path, model_type):
    model = tiny_fla(model_type).eval()
    model.save_pretrained(tmp_path / model_type)
    loaded = hl.load_model(tmp_path / model_type)
    ids = torch.randint(1, 64, (2, 30))
    with torch_path(), torch.no_grad():
        out, state = hl.forward_with_state(loaded, ids)
        plain = loaded(ids).logits  # load_model prepared it: a plain call takes the torch path on the CPU
    with torch.no_grad():
        expected = model(ids).logits  # the unprepared model: fla's own kernels (Triton's interpreter here)
    assert relative_error(out.logits, expected) < 1e-4 and relative_error(plain, expected) < 1e-4
    again = hl.CarriedState.from_state_dict(state.state_dict(), loaded.config)
    assert all(torch.equal(a, b) for a, b in zip(again.all_tensors, state.all_tensors))


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("state_init", ["zero", "random_noise", "fitted_noise", "state_passing", "tbtt"])
def test_every_state_init_trains(tmp_path, model_type, state_init):
    model = tiny_fla(model_type)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    documents = Dataset.from_dict({"input_ids": [[1 + (d * 7 + i) % 60 for i in range(90)] for d in range(8)]})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path), state_init=state_init, segment_length=16, per_device_train_batch_size=2,
        max_steps=3, learning_rate=1e-3, fitted_noise_warmup_steps=1, use_cpu=True, report_to=[], logging_steps=1,
    )  # fmt: skip
    trainer = hl.StatePassingTrainer(model, args, train_dataset=documents)
    with torch_path():
        trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    if state_init == "fitted_noise":  # statistics per layer of the one accumulating kind (not the token shifts)
        assert trainer.intervention.fitted_stats.num_layers == 2


@pytest.mark.parametrize(
    ("model_type", "overrides", "match"),
    [
        ("gla", {"use_short_conv": True}, "use_short_conv.*not supported by hf_longssm yet"),
        ("gla", {"feature_map": "relu"}, "feature_map.*not supported by hf_longssm yet"),
        ("gated_deltanet", {"use_short_conv": False}, "without its short convs"),
    ],
)
def test_unsupported_configs_are_refused_when_prepared_or_loaded(tmp_path, model_type, overrides, match):
    """Refused before any call: on the torch path a plain call would otherwise run without the short convs."""
    model = tiny_fla(model_type, **overrides)
    with pytest.raises(ValueError, match=match):
        hl.prepare_model(model)
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=match):
        hl.load_model(tmp_path / "m")


def test_a_deep_copy_runs_the_torch_path_and_the_model_computes_its_own_loss_on_cpu():
    """A prepared model deep-copied (a reference or EMA model) keeps its torch path (fla's activations are bound
    methods, new objects in the copy); `model(ids, labels=ids)` takes torch's cross-entropy where fla's fused one
    (Triton-only) cannot run."""
    import copy

    ids = torch.randint(1, 64, (2, 20))
    for model in (hl.prepare_model(tiny_rwkv6()), hl.prepare_model(tiny_gla(fuse_norm=False))):
        twin = copy.deepcopy(model).eval()
        with torch_path(), torch.no_grad():
            out = twin(ids, labels=ids)
            reference = model.eval()(ids).logits
        torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-6)
        expected = torch.nn.functional.cross_entropy(reference[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_state_shapes_round_widths_as_fla_does():
    model = tiny_gla(hidden_size=200, num_heads=2, expand_k=0.58, intermediate_size=64)  # key_dim round(115.99)
    ids = torch.randint(1, 64, (1, 12))
    with torch_path(), torch.no_grad():
        logits, state = run_segments(model, ids, [5, 7])
        reference = model(ids).logits
    assert state.states["recurrent_states"][0].shape[-1] == 58
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_tiny_model_post_trains_and_evaluates_from_the_command_line(tmp_path, model_type):
    import json

    from hf_longssm.cli import train
    from hf_longssm.cli.eval import main as eval_main
    from tests.cli.test_train import tiny_run_args

    args = tiny_run_args(tmp_path, max_steps=2)
    spec = tiny_fla(model_type, vocab_size=257).config.to_dict()
    args[args.index("--model_config") + 1] = json.dumps(spec)
    with torch_path():
        trainer = train.main([*args, "--state_init", "tbtt"])
        out = tmp_path / "run"
        assert trainer.state.global_step == 2 and hl.load_model(str(out)).config.model_type == model_type
        eval_args = ["--model", str(out), "--task", "position_ppl", "--data", str(tmp_path / "play.txt"),
                     "--length", "300", "--segment_length", "64", "--output_dir", str(tmp_path / "eval")]  # fmt: skip
        payload = json.loads(eval_main(eval_args).read_text())
    buckets = payload["results"][str(out)]["buckets"]
    assert payload["train_context"] == 16 and buckets[0]["start"] == 0 and buckets[-1]["end"] == 299
    # the evaluation read 300 tokens in segments of 64 with the carried state: its NLL is one plain forward's
    from hf_longssm.tokenization import byte_tokenizer

    ids = torch.tensor([byte_tokenizer()((tmp_path / "play.txt").read_text())["input_ids"][:300]])
    with torch_path(), torch.no_grad():
        logits = hl.load_model(str(out))(ids).logits
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    weighted = sum(b["nll"] * (b["end"] - b["start"]) for b in buckets) / 299
    assert weighted == pytest.approx(nll, rel=1e-4)


def test_the_gla_demo_recipes_train_as_written(tmp_path, monkeypatch):
    """recipes/gla-tiny-bytes, shrunk as tests/cli/test_recipes_by_hub_id.py shrinks the others: the pretraining
    recipe writes outputs/demo-gla/base, which every post-training recipe names."""
    from hf_longssm.cli import train
    from tests.cli.test_recipes_by_hub_id import FLA_RECIPES, ROOT, TEXT, recipe_args

    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    (tmp_path / "data").mkdir()
    for i in range(2):
        (tmp_path / "data" / f"doc{i}.txt").write_text(f"Document {i}. " + TEXT)
    monkeypatch.chdir(tmp_path)
    demo = [r for r in FLA_RECIPES if "gla-tiny-bytes" in str(r)]
    pretrain = next(r for r in demo if r.name == "config_pretrain.yaml")
    with torch_path():
        trainers = [train.main(recipe_args(pretrain, tmp_path, output_dir=None))]
        for recipe in [r for r in demo if r != pretrain]:
            out = tmp_path / "post" / recipe.parent.name
            trainers.append(train.main([*recipe_args(recipe, tmp_path, out), "--eval_strategy", "no"]))
            assert hl.load_model(str(out)).config.model_type == "gla"
    assert [t.state.global_step for t in trainers] == [2] * 6
    assert {t.args.state_init for t in trainers} == {"zero", "random_noise", "fitted_noise", "state_passing", "tbtt"}


def test_the_gla_recipe_trains_by_its_hub_id_from_the_cache(tmp_path, monkeypatch):
    """recipes/gla-1.3b by its Hub id, served offline from a Hub cache holding a tiny GLA (and the byte tokenizer)
    under `fla-hub/gla-1.3B-100B`, shrunk as the other recipes' tests shrink them: LoRA trains, the adapter saves and
    loads back onto its base by id."""
    from huggingface_hub import constants

    from hf_longssm.cli import train
    from hf_longssm.tokenization import byte_tokenizer
    from tests.cli.test_recipes_by_hub_id import FLA_RECIPES, TEXT, recipe_args
    from tests.hub_cache import saved_folder_files, write_repo

    [recipe] = [r for r in FLA_RECIPES if "gla-1.3b" in str(r)]
    model_id = "fla-hub/gla-1.3B-100B"
    base = tiny_gla(vocab_size=257).eval()
    files = saved_folder_files(base, tmp_path / "model") | saved_folder_files(byte_tokenizer(), tmp_path / "tok")
    write_repo(tmp_path / "hf" / "hub", model_id, files)
    for name, value in {
        "HF_HOME": tmp_path / "hf",
        "HF_HUB_CACHE": tmp_path / "hf" / "hub",
        "HF_HUB_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "data").mkdir()
    for i in range(2):
        (tmp_path / "data" / f"doc{i}.txt").write_text(f"Document {i}. " + TEXT)
    with torch_path():
        trainer = train.main(recipe_args(recipe, tmp_path, tmp_path / "out"))
        adapter = hl.load_model(str(tmp_path / "out"))
    assert trainer.state.global_step == 2 and trainer.model.config.model_type == "gla"
    assert (tmp_path / "out" / "adapter_config.json").is_file() and adapter.active_adapters == ["default"]
    lora = {n for n, _ in adapter.named_parameters() if "lora_" in n}
    assert lora and all(any(t in n for t in ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj")) for n in lora)


def test_gla_memory_logspace_sets_each_heads_channel_memories_and_refuses_other_models():
    from hf_longssm.loading import apply_model_init
    from tests.utils import tiny_model

    model = tiny_gla(num_kv_heads=1)  # two query heads share one key head: the bias has one head's channels
    apply_model_init(model, {"gla_memory_logspace": [4, 4096]})
    for layer in model.model.layers:
        bias = layer.attn.gk_proj[1].bias.detach().double()
        memory = -layer.attn.gate_logit_normalizer / torch.nn.functional.logsigmoid(bias)  # tokens per e-fold
        expected = torch.logspace(torch.log10(torch.tensor(4.0)), torch.log10(torch.tensor(4096.0)), 8).double()
        torch.testing.assert_close(memory, expected, rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="has none"):
        apply_model_init(tiny_model("mamba2"), {"gla_memory_logspace": [4, 4096]})
