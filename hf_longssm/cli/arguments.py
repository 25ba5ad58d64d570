"""Argument dataclasses and the `--config recipe.yaml` parser shared by the recipes (TRL style)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser


@dataclass
class ScriptArguments:
    """Where the documents come from.

    Args:
        dataset_name (`str`, *optional*): a Hub dataset id, or `"hf_longssm/offline-shakespeare"` for the offline
            corpus of `hf_longssm.corpus` (no Hub needed).
        dataset_config (`str`, *optional*): the dataset's config name.
        dataset_train_split (`str`, *optional*, defaults to `"train"`).
        dataset_streaming (`bool`, *optional*, defaults to `False`): stream the Hub dataset.
        data_files (`list[str]`, *optional*): local `.txt` (one document per file) or `.json`/`.jsonl` files
            (a `text` or `input_ids` field per row) instead of `dataset_name`.
        tokenizer_name_or_path (`str`, *optional*): `"byte"` for byte-level tokens (no files); defaults to the model.
    """

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id or hf_longssm/offline-*."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset config name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset from the Hub."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Local .txt / .json / .jsonl files."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "'byte', a Hub id or a path."})


@dataclass
class ModelArguments:
    """Which model to post-train.

    Args:
        model_name_or_path (`str`, *optional*): Hub id or local path of a Mamba / FalconMamba / Mamba-2 checkpoint.
        model_config (`str`, *optional*): instead, a JSON file (or JSON string) of a config to build a randomly
            initialized model from (`model_type` included): pretraining from scratch, as the offline demo does.
        torch_dtype (`str`, *optional*, defaults to `"float32"`).
        use_peft (`bool`, *optional*, defaults to `False`): train LoRA adapters.
        lora_r, lora_alpha, lora_dropout: LoRA hyper-parameters.
        lora_target_modules (`list[str]`, *optional*): defaults to the architecture's targets.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local path."})
    model_config: str | None = field(default=None, metadata={"help": "JSON config to build a model from scratch."})
    torch_dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "LoRA targets."})

    def __post_init__(self):
        if (self.model_name_or_path is None) == (self.model_config is None):
            raise ValueError("Give exactly one of model_name_or_path (a checkpoint) or model_config (from scratch).")


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` that reads `--config recipe.yaml` first; the command line overrides it.

    Keys of the YAML that no dataclass knows are refused (a typo must not silently fall back to a default).
    """

    def parse_args_and_config(self, args: list[str] | None = None):
        args = list(sys.argv[1:] if args is None else args)
        if "--config" in args:
            i = args.index("--config")
            if i + 1 >= len(args):
                raise ValueError("--config needs a YAML file.")
            config_path = args[i + 1]
            del args[i : i + 2]
            with open(config_path) as f:
                config = yaml.safe_load(f) or {}
            known = {f.name for dtype in self.dataclass_types for f in fields(dtype)}
            unknown = sorted(set(config) - known)
            if unknown:
                raise ValueError(f"{config_path}: unknown keys {unknown}. Check the spelling against --help.")
            defaults = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in config.items()}
            self.set_defaults(**defaults)
            # Required arguments given in the YAML no longer need the command line.
            for action in self._actions:
                if action.dest in defaults:
                    action.required = False
        return self.parse_args_into_dataclasses(args=args)


def load_model_config_json(value: str) -> dict:
    """`model_config` from a JSON string (it starts with `{`) or a JSON file path."""
    # Decided by the first character: a long JSON string is no valid path (`Path.is_file` raises on it).
    return json.loads(value if value.lstrip().startswith("{") else Path(value).read_text())
