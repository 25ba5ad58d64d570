"""Models dispatched by accelerate (`from_pretrained(device_map=...)`, layers offloaded to the disk) carry their state
exactly like the plain model: segments, final states, position perplexity, `to_cache` + `generate`, the lm-eval
adapter and `load_model` of both checkpoint formats."""

import json

import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM

import hf_longssm as hl
from hf_longssm.evaluation.passkey import passkey_retrieval
from hf_longssm.modeling import cache_argument, input_device
from hf_longssm.tokenization import byte_tokenizer
from tests.hub_cache import SPECIAL_IDS, mamba_ssm_files, randomized
from tests.utils import MODEL_TYPES, run_segments, tiny_model


VOCAB = 257  # the byte tokenizer's, for passkey and the lm-eval adapter
SIZES = [10, 7, 7]  # segments of a 24-token input
LAYERS = 3
# Layer 1 on the disk (its weights on "meta", on-loaded around each call), the rest on the CPU; and a dict map that
# puts everything on the CPU (no hooks: accelerate moves the model to its one device).
PLACEMENTS = {
    "disk": {"embeddings": "cpu", "layers.0": "cpu", "layers.1": "disk", "layers.2": "cpu", "norm_f": "cpu"},
    "cpu": {"embeddings": "cpu", "layers.0": "cpu", "layers.1": "cpu", "layers.2": "cpu", "norm_f": "cpu"},
}


def device_map(placement: str) -> dict[str, str]:
    return {f"backbone.{name}": device for name, device in PLACEMENTS[placement].items()} | {"lm_head": "cpu"}


def input_ids(rows: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(1, VOCAB, (rows, length), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", params=MODEL_TYPES)
def plain_dir(request, tmp_path_factory):
    """The plain tiny model and the folder it (and the byte tokenizer) were saved to."""
    model = tiny_model(request.param, vocab_size=VOCAB, num_hidden_layers=LAYERS).eval()
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module", params=sorted(PLACEMENTS))
def models(request, plain_dir):
    """`(plain, dispatched)`: the dispatched model loaded with `placement`'s device map."""
    plain, folder = plain_dir
    dispatched = hl.load_model(
        folder, dtype=torch.float32, device_map=device_map(request.param), offload_folder=str(folder / "offload")
    )
    if request.param == "disk":  # the test is about offloading: make sure it happened
        assert {p.device.type for p in dispatched.backbone.layers[1].parameters()} == {"meta"}
    return plain, dispatched


def assert_states_equal(mine: hl.CarriedState, theirs: hl.CarriedState) -> None:
    for a, b in zip(mine.conv_states + mine.recurrent_states, theirs.conv_states + theirs.recurrent_states):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_segments_equal_one_pass_of_the_plain_model(models):
    plain, dispatched = models
    ids = input_ids()
    logits, state = run_segments(dispatched, ids, SIZES)
    torch.testing.assert_close(logits, plain(ids).logits, rtol=0, atol=1e-4)
    assert_states_equal(state, run_segments(plain, ids, SIZES)[1])
    assert {t.device.type for t in state.conv_states + state.recurrent_states} == {"cpu"}
    # The offloaded layer's weights went back to the disk after the calls (nothing stays on-loaded).
    if hasattr(dispatched.backbone.layers[1].mixer.conv1d, "_hf_hook"):
        assert {p.device.type for p in dispatched.backbone.layers[1].parameters()} == {"meta"}

    # Sensitivity: the state is what makes the segments exact (the same segment from zeros differs).
    from_zeros = hl.forward_with_state(dispatched, ids[:, SIZES[0] :])[0].logits
    assert (from_zeros - plain(ids).logits[:, SIZES[0] :]).abs().max() > 1e-2


@torch.no_grad()
def test_position_perplexity_equals_the_plain_models(models):
    plain, dispatched = models
    ids = input_ids(length=30)
    mine = hl.evaluation.position_perplexity(dispatched, ids, segment_length=8)
    theirs = hl.evaluation.position_perplexity(plain, ids, segment_length=8)
    torch.testing.assert_close(mine.nll, theirs.nll, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_to_cache_and_generate_continue_as_the_plain_model(models):
    plain, dispatched = models
    ids = input_ids(length=16)
    assert input_device(dispatched) == torch.device("cpu")
    _, state = hl.forward_with_state(dispatched, ids[:, :-1])
    cache = {cache_argument(dispatched): state.to_cache(dispatched.config)}
    generated = dispatched.generate(ids[:, -1:], max_new_tokens=6, do_sample=False, pad_token_id=0, **cache)
    expected = plain.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert generated[:, 1:].tolist() == expected[:, ids.shape[1] :].tolist()


def test_passkey_runs_and_equals_the_plain_models(models):
    plain, dispatched = models
    tokenizer = byte_tokenizer()
    kwargs = dict(lengths=[300], depths=[0.5], num_trials=1, segment_length=64)
    assert passkey_retrieval(dispatched, tokenizer, **kwargs) == passkey_retrieval(plain, tokenizer, **kwargs)


def test_the_lm_eval_adapter_loads_with_a_device_map_and_scores_as_the_plain_model(plain_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from hf_longssm.evaluation.harness import LongSSMLM

    plain, folder = plain_dir
    ours = LongSSMLM(
        str(folder), segment_length=8, device_map=device_map("disk"), offload_folder=str(tmp_path / "offload")
    )
    assert ours.model.hf_device_map == device_map("disk")  # dispatched, not moved
    reference = LongSSMLM(plain, tokenizer=ours.tokenizer, segment_length=8)
    requests = [Instance("loglikelihood", {}, ("The sky is", " blue"), 0)]
    requests.append(Instance("loglikelihood", {}, ("The grass is green, the sky is", " blue."), 1))
    mine = ours.loglikelihood(requests, disable_tqdm=True)
    theirs = reference.loglikelihood(requests, disable_tqdm=True)
    assert [lp for lp, _ in mine] == pytest.approx([lp for lp, _ in theirs], abs=1e-4)
    assert [g for _, g in mine] == [g for _, g in theirs]


def test_a_mamba_ssm_checkpoint_loads_with_a_device_map(tmp_path):
    config = MambaConfig(
        hidden_size=16, num_hidden_layers=LAYERS, vocab_size=64, state_size=4, conv_kernel=4, expand=2,
        time_step_rank=4, tie_word_embeddings=True, **SPECIAL_IDS,
    )  # fmt: skip
    source = randomized(MambaForCausalLM(config), seed=2).eval()
    mamba_ssm_config = {"d_model": 16, "n_layer": LAYERS, "vocab_size": 64, "ssm_cfg": {"d_state": 4, "dt_rank": 4}}
    mamba_ssm_config |= {"rms_norm": True, "residual_in_fp32": True, "pad_vocab_size_multiple": 8}
    for name, data in mamba_ssm_files(source, mamba_ssm_config).items():
        (tmp_path / name).write_bytes(data)
    assert "d_model" in json.loads((tmp_path / "config.json").read_text())  # mamba_ssm's format, not transformers'
    model = hl.load_model(tmp_path, device_map=device_map("disk"), offload_folder=str(tmp_path / "offload"))
    assert {p.device.type for p in model.backbone.layers[1].parameters()} == {"meta"}
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, _ = run_segments(model, ids, SIZES)
        torch.testing.assert_close(logits, source(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_layers_on_different_devices_keep_their_state_where_they_run(model_type):
    """Layer 1 runs on the GPU, the others on the CPU: each layer's state lives on its layer's device."""
    from accelerate import dispatch_model

    plain = tiny_model(model_type, vocab_size=VOCAB, num_hidden_layers=LAYERS).eval()
    ids = input_ids()
    expected_logits, expected_state = plain(ids).logits, run_segments(plain, ids, SIZES)[1]
    gpu_map = device_map("cpu") | {"backbone.layers.1": 0}
    dispatched = dispatch_model(tiny_model(model_type, vocab_size=VOCAB, num_hidden_layers=LAYERS), gpu_map, "cpu")
    logits, state = run_segments(dispatched.eval(), ids, SIZES)
    assert [s.device.type for s in state.recurrent_states] == ["cpu", "cuda", "cpu"]
    assert [s.device.type for s in state.conv_states] == ["cpu", "cuda", "cpu"]
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-3)  # the GPU may use other kernels
    for a, b in zip(state.recurrent_states, expected_state.recurrent_states):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3)
    # A state moved to one device (saved, loaded...) still works: each layer takes its part to its own device.
    _, moved = hl.forward_with_state(dispatched, ids[:, :5], state.to("cpu"))
    assert [s.device.type for s in moved.recurrent_states] == ["cpu", "cuda", "cpu"]
    # reset, permute and norms work across devices.
    assert state.reset(torch.tensor([True, False])).permute([1, 0]).norms().shape == (LAYERS,)
