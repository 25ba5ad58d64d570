"""`hf-longssm convert SRC DST`: a transformers-format copy that loads without hf_longssm, with equal logits; a
non-empty DST is refused and left as it was."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_longssm import cli
from hf_longssm.cli import convert
from hf_longssm.loading import convert_checkpoint
from tests import hub_cache as fixtures
from tests.hub_cache import MAMBA1_ID, MAMBA2_ID, NEOX_ID


hub_cache, hub_cache_files = fixtures.hub_cache, fixtures.hub_cache_files  # the offline Hub cache fixtures
IDS = torch.randint(0, 257, (2, 33), generator=torch.Generator().manual_seed(3))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits.float()


def test_convert_is_a_command_with_its_help_line():
    assert cli.COMMANDS["convert"] is convert
    assert convert.__doc__.splitlines()[0].startswith("Write a transformers-format copy of a checkpoint")
    assert "hf-longssm convert SRC DST [--tokenizer NAME] [--dtype float32|bfloat16|float16|auto]" in convert.__doc__


def test_a_mamba2_hub_checkpoint_converts_to_a_folder_transformers_loads_with_equal_logits(
    hub_cache, tmp_path, capsys
):
    dst = tmp_path / "mamba2-130m-hf"
    cli.main(["convert", MAMBA2_ID, str(dst), "--tokenizer", NEOX_ID])
    assert "Wrote" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in dst.iterdir()}
    assert json.loads((dst / "config.json").read_text())["model_type"] == "mamba2"
    model = AutoModelForCausalLM.from_pretrained(dst)
    assert model.config.vocab_size == 272 and model.lm_head.weight is model.get_input_embeddings().weight
    assert (logits(model) - logits(hub_cache.sources[MAMBA2_ID])).abs().max().item() <= 1e-5
    assert AutoTokenizer.from_pretrained(dst)("ab", add_special_tokens=False)["input_ids"] == [98, 99]


def test_dtype_is_the_dtype_written(hub_cache, tmp_path):
    cli.main(["convert", MAMBA1_ID, str(tmp_path / "out"), "--dtype", "bfloat16"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert model.dtype == torch.bfloat16 and model.config.model_type == "mamba"
    reference = hub_cache.sources[MAMBA1_ID]
    assert torch.equal(model.backbone.embeddings.weight, reference.backbone.embeddings.weight.to(torch.bfloat16))


def test_a_non_empty_destination_is_refused_and_left_untouched(hub_cache, tmp_path, capsys):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "config.json").write_text("my own file")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert", MAMBA2_ID, str(dst)])
    assert exit_info.value.code == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["config.json"] and (dst / "config.json").read_text() == "my own file"

    cli.main(["convert", MAMBA2_ID, str(dst), "--overwrite"])
    assert AutoModelForCausalLM.from_pretrained(dst).config.model_type == "mamba2"


def test_an_empty_destination_folder_is_fine_and_a_file_is_refused(hub_cache, tmp_path):
    (tmp_path / "empty").mkdir()
    convert_checkpoint(MAMBA1_ID, tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        convert_checkpoint(MAMBA1_ID, tmp_path / "file", overwrite=True)


def test_a_source_that_does_not_load_writes_nothing(hub_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert", "state-spaces/mamba2-999m", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert "not in the Hub cache" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
