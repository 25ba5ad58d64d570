"""Post-train a Mamba-family model with state passing (or another state intervention), then save, card, push.

    hf-longssm train --config recipes/mamba2-130m/sp/config_full.yaml [--any_key value ...]
    accelerate launch [--config_file recipes/accelerate_configs/multi_gpu.yaml] recipes/post_train_sp.py \
        --config recipes/mamba2-130m/sp/config_full.yaml [--any_key value ...]

Command-line flags override the YAML; unknown YAML keys are refused. Resumes from the last checkpoint in
`output_dir` when there is one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..loading import load_model, load_tokenizer
from ..sources import load_documents
from ..training import StatePassingConfig, StatePassingTrainer
from .arguments import ModelArguments, RecipeParser, ScriptArguments, load_model_config_json


logger = logging.get_logger(__name__)


def make_parser() -> RecipeParser:
    """The recipe parser: `--config recipe.yaml` into `(ScriptArguments, StatePassingConfig, ModelArguments)`."""
    return RecipeParser(
        (ScriptArguments, StatePassingConfig, ModelArguments),
        prog="hf-longssm train",
        description=__doc__.splitlines()[0],
    )


def tokenizer_from_args(script_args: ScriptArguments, model_args: ModelArguments):
    """`tokenizer_name_or_path`, else the tokenizer saved with `model_name_or_path` (see `loading.load_tokenizer`)."""
    name = script_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name is None:
        raise ValueError("A model built from model_config needs tokenizer_name_or_path ('byte' or a tokenizer).")
    return load_tokenizer(name)


def model_from_args(model_args: ModelArguments) -> PreTrainedModel:
    """A randomly initialised model from `model_config`, or the checkpoint `model_name_or_path`."""
    dtype = getattr(torch, model_args.torch_dtype)
    if model_args.model_config is not None:
        spec = load_model_config_json(model_args.model_config)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec), dtype=dtype)
    return load_model(model_args.model_name_or_path, dtype=dtype)


def peft_config_from(model_args: ModelArguments):
    """A `peft.LoraConfig` when `use_peft`, else `None` (targets default to the architecture's)."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def train(
    script_args: ScriptArguments, training_args: StatePassingConfig, model_args: ModelArguments
) -> StatePassingTrainer:
    """Train from parsed arguments (TRL's `main(script_args, training_args, model_args)`); returns the trainer."""
    set_seed(training_args.seed)
    tokenizer = tokenizer_from_args(script_args, model_args)
    model = model_from_args(model_args)
    documents = load_documents(
        dataset_name=script_args.dataset_name,
        data_files=script_args.data_files,
        split=script_args.dataset_train_split,
        config=script_args.dataset_config,
        streaming=script_args.dataset_streaming,
    )

    trainer = StatePassingTrainer(
        model=model,
        args=training_args,
        train_dataset=documents,
        processing_class=tokenizer,
        peft_config=peft_config_from(model_args),
    )
    last_checkpoint = (
        get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
    )
    if last_checkpoint is not None:
        logger.warning(f"Resuming from {last_checkpoint}")
    result = trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save, card, push.
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(base_model=model_args.model_name_or_path, dataset_name=script_args.dataset_name)
    (Path(training_args.output_dir) / "train_results.json").write_text(json.dumps(result.metrics, indent=2))
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="Post-trained with hf_longssm")
    return trainer


def main(argv: list[str] | None = None) -> StatePassingTrainer:
    """`hf-longssm train --config recipe.yaml [--key value ...]` (`argv` defaults to the command line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return train(*make_parser().parse_args_and_config(args))
