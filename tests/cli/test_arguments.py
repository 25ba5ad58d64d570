"""`ModelArguments.dtype` (transformers' name, with `auto`), its deprecated alias `torch_dtype`, and how
`model_from_args` applies it to a checkpoint in either format."""

import json

import pytest
import torch

from hf_longssm.cli import train
from hf_longssm.cli.arguments import ModelArguments
from tests import hub_cache as fixtures
from tests.hub_cache import MAMBA1_HF_ID, MAMBA2_ID
from tests.utils import tiny_config


hub_cache, hub_cache_files = fixtures.hub_cache, fixtures.hub_cache_files  # the offline Hub cache fixtures


def parse(*args: str) -> ModelArguments:
    return train.make_parser().parse_args_and_config(["--output_dir", "unused", *args])[2]


def test_dtype_defaults_to_float32_and_takes_the_four_choices():
    assert parse("--model_name_or_path", MAMBA2_ID).dtype == "float32"
    for dtype in ("auto", "float32", "bfloat16", "float16"):
        assert parse("--model_name_or_path", MAMBA2_ID, "--dtype", dtype).dtype == dtype
    with pytest.raises(SystemExit):
        parse("--model_name_or_path", MAMBA2_ID, "--dtype", "float8")
    with pytest.raises(ValueError, match="dtype='float8'"):
        ModelArguments(model_name_or_path=MAMBA2_ID, dtype="float8")


def test_torch_dtype_is_still_read_with_a_warning(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"model_name_or_path: {MAMBA2_ID}\ntorch_dtype: bfloat16\nstate_init: zero\n")
    with pytest.warns(FutureWarning, match="torch_dtype is deprecated: use dtype"):
        model_args = parse("--config", str(recipe))
    assert model_args.dtype == "bfloat16" and model_args.torch_dtype is None


@pytest.mark.parametrize(("dtype", "expected"), [("auto", torch.float32), ("bfloat16", torch.bfloat16)])
def test_model_from_args_loads_hub_checkpoints_in_either_format_in_the_dtype(hub_cache, dtype, expected):
    for name in (MAMBA2_ID, MAMBA1_HF_ID):
        assert train.model_from_args(ModelArguments(model_name_or_path=name, dtype=dtype)).dtype == expected


def test_auto_builds_a_model_from_config_in_float32():
    spec = json.dumps(tiny_config("mamba2").to_dict())
    assert train.model_from_args(ModelArguments(model_config=spec, dtype="auto")).dtype == torch.float32


def test_the_fsdp2_recipe_parses_into_fsdp2_settings():
    # `fsdp: true` in YAML is the bare `--fsdp` flag (not the legacy string "True"); `fsdp_config` a mapping.
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "falcon-mamba-7b" / "sp" / "config_fsdp2.yaml"
    _, training_args, _ = train.make_parser().parse_args_and_config(["--config", str(recipe), "--use_cpu", "true"])
    plugin = training_args.fsdp_plugin_args
    assert training_args.fsdp is True and plugin["fsdp_version"] == 2
    assert plugin["transformer_cls_names_to_wrap"] == "FalconMambaBlock"
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT" and plugin["activation_checkpointing"] is True
