"""The family registry: every family file declares everything, the registry collects it, bad types are refused."""

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

import hf_longssm as hl
from hf_longssm.modeling import (
    SUPPORTED_ARCHITECTURES,
    StatefulMixerMixin,
    cache_argument,
    get_architecture,
    state_shapes,
)
from hf_longssm.modeling.registry import FAMILIES
from tests.utils import HYBRID_TYPES, MODEL_TYPES, tiny_config, tiny_hybrid, tiny_hybrid_config, tiny_model


def test_unsupported_model_names_supported_types():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match=r"does not support model_type='gpt2'.*falcon_mamba.*mamba2"):
        hl.forward_with_state(gpt2, None)
    with pytest.raises(ValueError, match="does not support model_type='llama'"):
        get_architecture("llama")


def test_registry_collects_each_family_once_by_model_type():
    fla = ["gla", "rwkv6", "rwkv7", "gated_deltanet"]  # flash-linear-attention's families (their code is fla's)
    assert sorted(SUPPORTED_ARCHITECTURES) == sorted(MODEL_TYPES + HYBRID_TYPES + ["xlstm"] + fla)
    names = {get_architecture(t).display_name for t in MODEL_TYPES + HYBRID_TYPES + ["xlstm"] + fla}
    hybrids = {"Granite 4.0-H", "Bamba", "Nemotron-H", "Zamba2", "Falcon-H1", "Jamba"}
    gated_deltanet = {"Qwen3-Next", "Qwen3.5", "Qwen3.5-MoE", "OLMo-Hybrid"}
    fla_names = {"GLA", "RWKV-6", "RWKV-7", "Gated DeltaNet (fla)"}
    assert names == {"Mamba", "FalconMamba", "Mamba-2", "LFM2", "xLSTM"} | hybrids | gated_deltanet | fla_names
    assert len({id(a) for a in FAMILIES}) == len(FAMILIES) == 19
    # Their model code is imported only when such a model is loaded or prepared (fla imports Triton).
    assert all(callable(get_architecture(t).stateful_mixers) and get_architecture(t).register_model_code for t in fla)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_prepare_model_swaps_every_mixer_for_the_family_subclass(model_type):
    model = tiny_model(model_type)
    mixers = [m for m in model.modules() if type(m) in get_architecture(model).stateful_mixers]
    assert len(mixers) == model.config.num_hidden_layers
    hl.prepare_model(model)
    hl.prepare_model(model)  # idempotent
    swapped = [m for m in model.modules() if isinstance(m, StatefulMixerMixin)]
    assert len(swapped) == model.config.num_hidden_layers
    assert {type(m) for m in swapped} == set(get_architecture(model).stateful_mixers.values())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_state_shapes_match_transformers_cache(model_type):
    import torch

    model = tiny_model(model_type).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 64, (2, 5)), use_cache=True)
        cache = getattr(out, cache_argument(model))
    for layer_idx, (conv_shape, ssm_shape) in enumerate(state_shapes(tiny_config(model_type))):
        assert tuple(cache.get_conv_state(layer_idx).shape[1:]) == conv_shape
        assert tuple(cache.get_recurrent_state(layer_idx).shape[1:]) == ssm_shape


def test_lora_defaults_are_declared_per_family():
    assert get_architecture("mamba2").lora_target_modules == ("in_proj",)
    assert "in_proj" in get_architecture("mamba").lora_target_modules


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_hybrid_state_shapes_match_transformers_cache_and_mixers_are_swapped(model_type):
    import torch

    from hf_longssm.modeling import attention_layers, kv_shape, ssm_layers, state_kinds

    config = tiny_hybrid_config(model_type)
    model = tiny_hybrid(model_type).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 64, (2, 5)), use_cache=True)
    cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")  # 5.24+ / 5.21-5.23
    read = {"conv_states": cache.get_conv_state, "recurrent_states": cache.get_recurrent_state}
    for layer_idx, shapes in zip(ssm_layers(config), state_shapes(config)):
        for kind, shape in zip(state_kinds(config), shapes, strict=True):  # LFM2: the conv window alone
            assert tuple(read[kind.name](layer_idx).shape[1:]) == shape
    for layer_idx in attention_layers(config):
        keys = cache.layers[layer_idx].keys
        assert (keys.shape[1], keys.shape[3]) == kv_shape(config)
    hl.prepare_model(model)
    swapped = [m for m in model.modules() if isinstance(m, StatefulMixerMixin)]
    assert sorted(m.layer_idx for m in swapped) == ssm_layers(config)
