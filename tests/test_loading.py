"""The one place names become models and tokenizers."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_longssm import loading
from hf_longssm.loading import load_model, load_tokenizer, resolve_model, resolve_tokenizer
from hf_longssm.tokenization import byte_tokenizer
from tests import hub_cache as fixtures
from tests.utils import tiny_model


hub_cache, hub_cache_files = fixtures.hub_cache, fixtures.hub_cache_files  # the offline Hub cache fixtures


@pytest.fixture()
def word_tokenizer_dir(tmp_path):
    """A real tokenizer saved with `save_pretrained`, built here (no Hub)."""
    vocab = {"<eos>": 0, "[UNK]": 1, "to": 2, "be": 3, "or": 4, "not": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="[UNK]").save_pretrained(tmp_path)
    return str(tmp_path)


TEXT = "To be, or not to be: wörds ✓\n"
BYTE_IDS = [b + 1 for b in TEXT.encode("utf-8")]


def test_byte_gives_the_byte_tokenizer():
    tokenizer = load_tokenizer("byte")
    assert tokenizer(TEXT, add_special_tokens=False)["input_ids"] == BYTE_IDS
    assert tokenizer.eos_token_id == 0 and len(tokenizer) == 257


def test_a_saved_byte_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    byte_tokenizer().save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    for tokenizer in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(str(tmp_path))):
        assert tokenizer(TEXT, add_special_tokens=False)["input_ids"] == BYTE_IDS
        assert tokenizer.decode(BYTE_IDS) == TEXT and tokenizer.eos_token_id == 0


def test_a_folder_of_an_older_byte_model_gives_the_byte_tokenizer(tmp_path):
    (tmp_path / "hf_longssm_tokenizer.json").write_text('{"eos_token_id": 0}')
    assert load_tokenizer(str(tmp_path))(TEXT, add_special_tokens=False)["input_ids"] == BYTE_IDS


def test_a_saved_tokenizer_folder_goes_through_auto_tokenizer(word_tokenizer_dir):
    tokenizer = load_tokenizer(word_tokenizer_dir)
    assert tokenizer("to be or not to be")["input_ids"] == [2, 3, 4, 5, 2, 3]
    assert tokenizer.eos_token_id == 0


def test_the_neox_name_gives_the_offline_neox_tokenizer(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(loading, "neox_tokenizer", lambda: sentinel)
    assert load_tokenizer("hf_longssm/gpt-neox-20b") is sentinel


def test_load_model_reads_a_saved_model(tmp_path):
    model = tiny_model("mamba2", vocab_size=257)
    model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_load_model_passes_from_pretrained_kwargs(tmp_path):
    tiny_model("mamba", vocab_size=64).save_pretrained(tmp_path)
    assert load_model(str(tmp_path), dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("given", ["both", "neither"])
def test_resolve_model_needs_exactly_one_of_model_and_model_id(given):
    kwargs = {"model": tiny_model("mamba2"), "model_id": "x"} if given == "both" else {}
    with pytest.raises(ValueError, match="exactly one of model= .* or model_id="):
        resolve_model(**kwargs)


def test_resolve_model_returns_the_live_model_in_eval_mode():
    model = tiny_model("mamba2").train()
    assert resolve_model(model) is model and not model.training


def test_resolve_model_loads_a_path_in_float32_by_default(tmp_path):
    tiny_model("mamba2").to(torch.float64).save_pretrained(tmp_path)
    model = resolve_model(model_id=str(tmp_path))
    assert model.dtype == torch.float32 and not model.training


def test_resolve_tokenizer_passes_a_tokenizer_object_through():
    tokenizer = byte_tokenizer()
    assert resolve_tokenizer(tokenizer, model_id="ignored") is tokenizer


def test_resolve_tokenizer_defaults_to_the_model_s(word_tokenizer_dir):
    assert resolve_tokenizer(None, model_id=word_tokenizer_dir)("not")["input_ids"] == [5]


def test_resolve_tokenizer_needs_a_name():
    with pytest.raises(ValueError, match="Pass tokenizer="):
        resolve_tokenizer()


def test_the_byte_tokenizer_encodes_the_text_eos_as_its_bytes(tmp_path):
    """id = UTF-8 byte + 1 for every text: a document that mentions "<eos>" is not split there."""
    document = ("Some text, then the literal <eos> marker, " * 5) + "and é."
    expected = [b + 1 for b in document.encode("utf-8")]
    tokenizer = byte_tokenizer()
    assert tokenizer(document, add_special_tokens=False)["input_ids"] == expected
    assert 0 not in expected and tokenizer.eos_token_id == 0
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(document, add_special_tokens=False)["input_ids"] == expected


def test_a_multimodal_qwen3_5_checkpoint_gives_its_language_model_by_hub_id(hub_cache):
    """Qwen/Qwen3.5-0.8B is a vision-language checkpoint (`model_type="qwen3_5"`): load_model gives the language model
    (Gated DeltaNet hybrid, `qwen3_5_text`) with the checkpoint's weights, and segments reproduce its logits."""
    import hf_longssm as hl
    from tests.hub_cache import QWEN3_5_ID

    model = load_model(QWEN3_5_ID).float()
    assert model.config.model_type == "qwen3_5_text"
    ids = torch.randint(1, 257, (1, 40))
    with torch.no_grad():
        expected = hub_cache.sources[QWEN3_5_ID](ids).logits
        state = hl.CarriedState.zeros(model, 1, attention_state="full")
        first, state = hl.forward_with_state(model, ids[:, :23], state)
        second, _ = hl.forward_with_state(model, ids[:, 23:], state)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), expected, rtol=1e-4, atol=1e-4)


def test_a_model_whose_code_is_fla_says_what_to_install_when_fla_does_not_import(tmp_path):
    import json

    try:
        import fla  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("fla imports here (the kernels environment tests GLA itself)")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gla", "hidden_size": 32}))
    with pytest.raises(ImportError, match=r'pip install "hf-longssm\[fla\]"'):
        load_model(tmp_path)
    with pytest.raises(ImportError, match=r'pip install "hf-longssm\[fla\]"'):
        loading.load_config(tmp_path)
