"""Argument dataclasses and the `--config recipe.yaml` parser shared by the recipes (TRL style)."""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import HfArgumentParser

from ..loading import DTYPES


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
        dataset_eval_split (`str`, *optional*): held-out documents of `dataset_name` for `trainer.evaluate()`
            (perplexity by position up to `eval_max_length`, every `eval_steps` with `eval_strategy: steps`).
        eval_data_files (`list[str]`, *optional*): local files of held-out documents instead.
    """

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id or hf_longssm/offline-*."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset config name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset from the Hub."})
    data_files: list[str] | None = field(default=None, metadata={"help": "Local .txt / .json / .jsonl files."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "'byte', a Hub id or a path."})
    dataset_eval_split: str | None = field(
        default=None, metadata={"help": "Split of dataset_name to evaluate on (with eval_strategy)."}
    )
    eval_data_files: list[str] | None = field(default=None, metadata={"help": "Local files to evaluate on."})


@dataclass
class ModelArguments:
    """Which model to post-train.

    Args:
        model_name_or_path (`str`, *optional*): Hub id or local path of a Mamba / FalconMamba / Mamba-2 checkpoint.
        model_config (`str`, *optional*): instead, a JSON file (or JSON string) of a config to build a randomly
            initialized model from (`model_type` included): pretraining from scratch, as the offline demo does.
        dtype (`str`, *optional*, defaults to `"float32"`): the weights' dtype, transformers' `dtype`: `"float32"`
            (master weights for `bf16`/`fp16` mixed precision), `"bfloat16"`, `"float16"`, or `"auto"` (the
            checkpoint's own dtype; float32 for a model built from `model_config`).
        torch_dtype (`str`, *optional*): the old name of `dtype`, still read (with a warning).
        model_init (`str`, *optional*): with `model_config`, a JSON object of initialisations applied after the
            model is built (`loading.MODEL_INITS`), e.g. `{"A_logspace": [0.01, 1.0]}` for long-memory heads; in a
            YAML recipe, a mapping.
        use_peft (`bool`, *optional*, defaults to `False`): train LoRA adapters.
        lora_r, lora_alpha, lora_dropout: LoRA hyper-parameters.
        lora_target_modules (`list[str]`, *optional*): defaults to the architecture's targets.
        base_model_id (`str`, *optional*): the Hub id of `model_name_or_path` when that is a local folder: the card's
            `base_model`, and the base a pushed LoRA adapter's `adapter_config.json` names.
        license (`str`, *optional*): the card's licence; defaults to the base model card's (none stated if unknown).
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local path."})
    model_config: str | None = field(default=None, metadata={"help": "JSON config to build a model from scratch."})
    dtype: str = field(
        default="float32",
        metadata={"help": "Weights' dtype (auto: the checkpoint's).", "choices": list(DTYPES)},
    )
    torch_dtype: str | None = field(default=None, metadata={"help": "Deprecated name of dtype."})
    model_init: str | None = field(
        default=None, metadata={"help": "JSON initialisations for a model built from model_config."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "LoRA targets."})
    base_model_id: str | None = field(default=None, metadata={"help": "Hub id of a local model_name_or_path."})
    license: str | None = field(default=None, metadata={"help": "The card's licence (default: the base model's)."})

    def __post_init__(self):
        if (self.model_name_or_path is None) == (self.model_config is None):
            raise ValueError("Give exactly one of model_name_or_path (a checkpoint) or model_config (from scratch).")
        if self.model_init is not None and self.model_config is None:
            raise ValueError("model_init initialises a model built from model_config, not a trained checkpoint.")
        if self.torch_dtype is not None:
            warnings.warn("torch_dtype is deprecated: use dtype (transformers' name).", FutureWarning, stacklevel=2)
            self.dtype, self.torch_dtype = self.torch_dtype, None
        if self.base_model_id is not None:
            try:
                validate_repo_id(self.base_model_id)
            except HFValidationError as err:
                raise ValueError(f"base_model_id={self.base_model_id!r} is not a Hub repository id: {err}") from None
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose from {list(DTYPES)}.")


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` that reads `--config recipe.yaml` first; the command line overrides it.

    Keys of the YAML that no dataclass knows are refused (a typo must not silently fall back to a default).
    """

    def parse_args_and_config(self, args: list[str] | None = None):
        args = list(sys.argv[1:] if args is None else args)
        args = [part for arg in args for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
        if "--config" in args:
            i = args.index("--config")
            if i + 1 >= len(args):
                raise ValueError("--config needs a YAML file.")
            config_path = args[i + 1]
            del args[i : i + 2]
            if not Path(config_path).is_file():
                raise FileNotFoundError(f"--config {config_path}: file not found.")
            with open(config_path) as f:
                try:
                    config = yaml.safe_load(f) or {}
                except yaml.YAMLError as err:
                    raise ValueError(f"{config_path} is not valid YAML: {err}") from None
            if not isinstance(config, dict):
                raise ValueError(f"{config_path}: expected `key: value` lines, got a {type(config).__name__}.")
            known = {f.name for dtype in self.dataclass_types for f in fields(dtype)}
            unknown = sorted(set(config) - known)
            if unknown:
                raise ValueError(f"{config_path}: unknown keys {unknown}. Check the spelling against --help.")
            actions = {action.dest: action for action in self._actions}
            defaults = {k: self._convert(config_path, actions[k], v) for k, v in config.items()}
            self.set_defaults(**defaults)
            # Required arguments given in the YAML no longer need the command line.
            for action in self._actions:
                if action.dest in defaults:
                    action.required = False
        return self.parse_args_into_dataclasses(args=args)

    @staticmethod
    def _convert(config_path: str, action, value):
        """A YAML value converted and checked as the command line would be (argparse skips defaults): a float or a
        list in an integer field is an error, not a silent wrong type."""
        if value is None:
            return None
        if isinstance(value, bool) and action.const is True:
            return value or None  # a flag that also takes a string (`fsdp`): `fsdp: true` is the bare `--fsdp`
        if isinstance(value, dict):
            return json.dumps(value)  # JSON-valued fields (model_config)
        convert = action.type or (lambda v: v)
        many = action.nargs in ("+", "*")
        if many and not isinstance(value, list):
            value = [value]  # `data_files: notes.txt`: one item
        if not many and isinstance(value, list):
            raise ValueError(f"{config_path}: {action.dest} takes one value, got the list {value!r}.")
        items = value if many else [value]
        converted = []
        for item in items:
            if isinstance(item, (list, dict)):
                raise ValueError(f"{config_path}: {action.dest} got {item!r}, not a single value.")
            if isinstance(item, bool) and action.choices is not None:
                # YAML 1.1 reads `no` / `yes` / `off` as booleans: `save_strategy: no` means the choice "no".
                if not item and "no" in action.choices:
                    item = "no"
                else:
                    raise ValueError(
                        f"{config_path}: {action.dest}: YAML read a boolean ({item!r}); quote the value, one of "
                        f"{list(action.choices)}."
                    )
            if convert is int and isinstance(item, float) or (convert is int and isinstance(item, bool)):
                raise ValueError(f"{config_path}: {action.dest} must be an integer, got {item!r}.")
            try:
                item = convert(item if isinstance(item, str) or convert is float else str(item))
            except (TypeError, ValueError) as err:
                name = getattr(convert, "__name__", "value")
                raise ValueError(f"{config_path}: {action.dest}={item!r} is not a valid {name} ({err}).") from err
            if action.choices is not None and item not in action.choices:
                raise ValueError(f"{config_path}: {action.dest}={item!r} is not one of {list(action.choices)}.")
            converted.append(item)
        return converted if many else converted[0]


def load_model_config_json(value: str) -> dict:
    """`model_config` from a JSON string (it starts with `{`) or a JSON file path."""
    # Decided by the first character: a long JSON string is no valid path (`Path.is_file` raises on it).
    return json.loads(value if value.lstrip().startswith("{") else Path(value).read_text())
