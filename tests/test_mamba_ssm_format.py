"""mamba_ssm's checkpoint format (the papers' `state-spaces/mamba2-*`, `state-spaces/mamba-*`) loads into transformers'
classes exactly, by Hub id (offline cache) or folder; what transformers cannot represent is refused by name."""

import copy
import io
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

import hf_longssm as hl
from hf_longssm.loading import load_model, resolve_model
from hf_longssm.mamba_ssm_format import is_mamba_ssm_config, padded_vocab_size, to_transformers_config
from hf_longssm.tokenization import byte_tokenizer
from tests import hub_cache as fixtures
from tests.hub_cache import (
    FALCON_ID,
    MAMBA1_HF_ID,
    MAMBA1_ID,
    MAMBA2_ID,
    SPECIAL_IDS,
    mamba_ssm_files,
    mamba_ssm_state_dict,
    randomized,
)
from tests.utils import run_segments


hub_cache, hub_cache_files = fixtures.hub_cache, fixtures.hub_cache_files  # the offline Hub cache fixtures


# The real config.json files of state-spaces/mamba2-130m and state-spaces/mamba-130m.
MAMBA2_130M = {
    "d_model": 768,
    "d_intermediate": 0,
    "n_layer": 24,
    "vocab_size": 50277,
    "ssm_cfg": {"layer": "Mamba2"},
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 16,
    "tie_embeddings": True,
}
MAMBA_130M = {
    "d_model": 768,
    "n_layer": 24,
    "vocab_size": 50277,
    "ssm_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 8,
}


def ids(vocab: int = 257, length: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(7))


def max_logit_diff(model, reference, input_ids) -> float:
    with torch.no_grad():
        return (model(input_ids).logits.float() - reference(input_ids).logits.float()).abs().max().item()


def write_folder(folder, files: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


# --- the real configs map to the transformers configs of the -hf conversions -------------------------------------


def test_the_real_mamba2_130m_config_gets_mamba_ssm_defaults():
    assert is_mamba_ssm_config(MAMBA2_130M)
    config = to_transformers_config(MAMBA2_130M)
    assert isinstance(config, Mamba2Config)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (768, 24, 50288)
    assert (config.state_size, config.conv_kernel, config.expand) == (128, 4, 2)
    assert (config.num_heads, config.head_dim, config.n_groups, config.chunk_size) == (24, 64, 1, 256)
    assert tuple(config.time_step_limit) == (0.0, math.inf)
    assert config.use_conv_bias and not config.use_bias and config.residual_in_fp32 and config.tie_word_embeddings
    assert config.layer_norm_epsilon == 1e-5
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 0, 0)


def test_the_real_mamba_130m_config_matches_mamba_130m_hf():
    config = to_transformers_config(MAMBA_130M)
    assert isinstance(config, MambaConfig)
    # state-spaces/mamba-130m-hf's config.json: vocab 50280, intermediate 1536, state 16, dt rank 48, tied.
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (768, 24, 50280)
    assert (config.intermediate_size, config.state_size, config.time_step_rank, config.conv_kernel) == (
        1536,
        16,
        48,
        4,
    )
    assert config.use_conv_bias and not config.use_bias and config.tie_word_embeddings
    assert config.layer_norm_epsilon == 1e-5 and config.residual_in_fp32


@pytest.mark.parametrize(("vocab", "multiple", "padded"), [(50277, 8, 50280), (50277, 16, 50288), (64, 16, 64)])
def test_vocab_is_padded_to_the_multiple(vocab, multiple, padded):
    assert padded_vocab_size(vocab, multiple) == padded


def test_a_transformers_config_is_not_taken_for_mamba_ssm():
    assert not is_mamba_ssm_config({"model_type": "mamba", "d_model": 768, "n_layer": 24})


# --- by Hub id, from the offline cache ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_id", "model_class", "vocab_size"),
    [(MAMBA2_ID, Mamba2ForCausalLM, 272), (MAMBA1_ID, MambaForCausalLM, 264)],
)
def test_a_mamba_ssm_checkpoint_loads_by_hub_id_with_the_logits_it_was_written_from(
    hub_cache, repo_id, model_class, vocab_size
):
    model = load_model(repo_id)
    assert type(model) is model_class and not model.training and model.dtype == torch.float32
    assert model.config.vocab_size == vocab_size  # 257 padded by pad_vocab_size_multiple
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied
    assert model.name_or_path == repo_id
    assert max_logit_diff(model, hub_cache.sources[repo_id], ids()) <= 1e-5


@pytest.mark.parametrize("repo_id", [MAMBA2_ID, MAMBA1_ID])
def test_segments_with_the_carried_state_equal_one_pass_after_loading(hub_cache, repo_id):
    model = load_model(repo_id)
    input_ids = ids(length=45)
    with torch.no_grad():
        one_pass = model(input_ids).logits
        segmented, _ = run_segments(model, input_ids, [17, 1, 27])
    assert (segmented - one_pass).abs().max().item() < 1e-4


@pytest.mark.parametrize("repo_id", [MAMBA1_HF_ID, FALCON_ID])
def test_transformers_format_repositories_load_by_hub_id(hub_cache, repo_id):
    model = load_model(repo_id)
    assert type(model) is type(hub_cache.sources[repo_id])
    assert max_logit_diff(model, hub_cache.sources[repo_id], ids()) == 0.0


def test_dtype_auto_is_the_checkpoints_and_a_dtype_or_its_name_converts(hub_cache):
    assert load_model(MAMBA2_ID, dtype="auto").dtype == torch.float32
    assert load_model(MAMBA2_ID, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert load_model(MAMBA1_ID, dtype="float16").dtype == torch.float16
    assert resolve_model(model_id=MAMBA2_ID).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_model(MAMBA2_ID, dtype="float8")


def test_config_attributes_given_as_keywords_set_the_config(hub_cache):
    assert load_model(MAMBA1_ID, use_mambapy=True).config.use_mambapy is True


def test_an_unknown_hub_id_offline_says_so(hub_cache):
    with pytest.raises(FileNotFoundError, match="state-spaces/mamba2-999m: config.json is not in the Hub cache .*"
                       "HF_HUB_OFFLINE=1"):  # fmt: skip
        load_model("state-spaces/mamba2-999m")


def test_a_missing_local_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder .* nor a Hub id"):
        load_model(str(tmp_path / "outputs" / "demo" / "base"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(str(tmp_path))


# --- from folders: non-default ssm_cfg, safetensors, bf16, untied head --------------------------------------------


def test_a_mamba2_folder_with_non_default_ssm_cfg_and_safetensors(tmp_path):
    torch.manual_seed(5)
    config = Mamba2Config(
        hidden_size=32, num_hidden_layers=2, vocab_size=100, state_size=8, conv_kernel=3, expand=2, num_heads=4,
        head_dim=16, n_groups=2, chunk_size=16, use_bias=True, use_conv_bias=False, time_step_limit=(0.01, 0.5),
        layer_norm_epsilon=1e-5, residual_in_fp32=True, tie_word_embeddings=False, **SPECIAL_IDS,
    )  # fmt: skip
    source = randomized(Mamba2ForCausalLM(config), seed=5)
    ssm_cfg = dict(layer="Mamba2", d_state=8, d_conv=3, headdim=16, ngroups=2, chunk_size=16, bias=True)
    ssm_cfg |= dict(conv_bias=False, dt_limit=[0.01, 0.5], use_mem_eff_path=False)
    mamba_ssm_config = MAMBA2_130M | dict(d_model=32, n_layer=2, vocab_size=97, ssm_cfg=ssm_cfg, tie_embeddings=False)
    mamba_ssm_config["pad_vocab_size_multiple"] = 4
    state = mamba_ssm_state_dict(source)
    assert "lm_head.weight" in state  # untied: its own weights
    write_folder(tmp_path, {"config.json": json.dumps(mamba_ssm_config).encode()})
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")

    model = load_model(str(tmp_path))
    assert model.config.n_groups == 2 and tuple(model.config.time_step_limit) == (0.01, 0.5)
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert max_logit_diff(model, source, ids(vocab=97)) <= 1e-5


def test_a_mamba1_folder_with_non_default_ssm_cfg(tmp_path):
    torch.manual_seed(6)
    config = MambaConfig(
        hidden_size=24, num_hidden_layers=2, vocab_size=64, state_size=4, conv_kernel=2, expand=3, time_step_rank=3,
        use_bias=True, use_conv_bias=False, layer_norm_epsilon=1e-5, tie_word_embeddings=True, **SPECIAL_IDS,
    )  # fmt: skip
    source = randomized(MambaForCausalLM(config), seed=6)
    ssm_cfg = dict(d_state=4, d_conv=2, expand=3, dt_rank=3, bias=True, conv_bias=False, use_fast_path=False)
    write_folder(
        tmp_path, mamba_ssm_files(source, MAMBA_130M | dict(d_model=24, n_layer=2, vocab_size=64, ssm_cfg=ssm_cfg))
    )
    model = load_model(str(tmp_path))
    assert model.config.intermediate_size == 72 and model.config.time_step_rank == 3
    assert max_logit_diff(model, source, ids(vocab=64)) <= 1e-5


def test_a_bfloat16_checkpoint_loads_in_bfloat16_with_dtype_auto(hub_cache, tmp_path):
    source = copy.deepcopy(hub_cache.sources[MAMBA1_ID]).to(torch.bfloat16)
    write_folder(tmp_path, mamba_ssm_files(source, MAMBA_130M | dict(d_model=16, n_layer=2, vocab_size=257)))
    model = load_model(str(tmp_path))
    assert model.dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


# --- refusals ----------------------------------------------------------------------------------------------------


REFUSED = {
    "attention layers": (dict(attn_layer_idx=[1], attn_cfg={"num_heads": 12}), "attention layers at attn_layer_idx"),
    "MLP": (dict(d_intermediate=1536), "d_intermediate=1536"),
    "Mamba-3": (dict(ssm_cfg={"layer": "Mamba3"}), "ssm_cfg.layer='Mamba3'"),
    "LayerNorm": (dict(rms_norm=False), "rms_norm=false"),
    "norm before gate": (dict(ssm_cfg={"layer": "Mamba2", "norm_before_gate": True}), "norm_before_gate=true"),
    "no gated norm": (dict(ssm_cfg={"layer": "Mamba2", "rmsnorm": False}), "rmsnorm=false"),
    "D per channel": (dict(ssm_cfg={"layer": "Mamba2", "D_has_hdim": True}), "D_has_hdim=true"),
    "partial SSM": (dict(ssm_cfg={"layer": "Mamba2", "d_ssm": 768}), "d_ssm=768"),
    "fractional expand": (dict(ssm_cfg={"layer": "Mamba2", "expand": 1.5}), "expand=1.5 is not an integer"),
    "unknown mixer key": (dict(ssm_cfg={"layer": "Mamba2", "foo": 1}), "ssm_cfg has keys .* \\['foo'\\]"),
    "unknown config key": (dict(bidirectional=True), "MambaConfig does not define: \\['bidirectional'\\]"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_transformers_cannot_represent_is_refused_by_name(case):
    change, message = REFUSED[case]
    with pytest.raises(ValueError, match="transformers' Mamba classes cannot represent this checkpoint") as error:
        to_transformers_config(MAMBA2_130M | change)
    assert error.match(message)


def test_a_refused_config_is_refused_before_any_weights_are_read(tmp_path):
    write_folder(tmp_path, {"config.json": json.dumps(MAMBA2_130M | {"ssm_cfg": {"layer": "Mamba3"}}).encode()})
    with pytest.raises(ValueError, match="Mamba3"):
        load_model(str(tmp_path))


def test_a_mamba_ssm_config_without_weights_says_which_files_it_looked_for(tmp_path):
    write_folder(tmp_path, {"config.json": json.dumps(MAMBA2_130M).encode()})
    with pytest.raises(FileNotFoundError, match="none of \\['model.safetensors', 'pytorch_model.bin'\\]"):
        load_model(str(tmp_path))


def _write_with(tmp_path, hub_cache, edit):
    files = mamba_ssm_files(hub_cache.sources[MAMBA1_ID], MAMBA_130M | dict(d_model=16, n_layer=2, vocab_size=257))
    state = torch.load(io.BytesIO(files["pytorch_model.bin"]), weights_only=True)
    edit(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_folder(tmp_path, files | {"pytorch_model.bin": buffer.getvalue()})


def test_missing_unexpected_and_misshapen_weights_are_named(hub_cache, tmp_path):
    def edit(state):
        del state["backbone.layers.1.mixer.D"]
        state["backbone.layers.0.mixer.extra"] = torch.zeros(3)
        state["backbone.norm_f.weight"] = torch.ones(17)

    folder = _write_with(tmp_path, hub_cache, edit)
    with pytest.raises(ValueError, match="do not fit") as error:
        load_model(str(folder))
    assert error.match("missing \\['backbone.layers.1.mixer.D'\\]")
    assert error.match("unexpected \\['backbone.layers.0.mixer.extra'\\]")
    assert error.match("wrong shape \\['backbone.norm_f.weight: checkpoint \\(17,\\), model \\(16,\\)'\\]")


def test_a_tied_head_that_differs_from_the_embedding_is_refused(hub_cache, tmp_path):
    def edit(state):
        state["lm_head.weight"] = state["lm_head.weight"] + 1.0

    with pytest.raises(ValueError, match="tie_embeddings=true but lm_head.weight differs"):
        load_model(str(_write_with(tmp_path, hub_cache, edit)))


def test_the_trainer_takes_a_mamba_ssm_hub_id(hub_cache, tmp_path):
    args = hl.StatePassingConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", segment_length=16)
    trainer = hl.StatePassingTrainer(model=MAMBA2_ID, args=args, processing_class=byte_tokenizer())
    assert type(trainer.model).__name__ == "Mamba2ForCausalLM" and trainer.model.name_or_path == MAMBA2_ID
