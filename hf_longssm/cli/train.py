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
from transformers.utils import logging

from ..loading import apply_model_init, load_model, load_tokenizer
from ..sources import load_documents
from ..training import StatePassingConfig, StatePassingTrainer
from ..training.checkpoints import FINISHED, FINISHED_FILE, resume_point
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
    """A randomly initialised model from `model_config`, or the checkpoint `model_name_or_path` in either format
    (transformers or mamba_ssm, see `loading.load_model`), in `model_args.dtype` (`"auto"`: the checkpoint's own;
    float32 for a model built from a config)."""
    if model_args.model_config is not None:
        spec = load_model_config_json(model_args.model_config)
        dtype = torch.float32 if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec), dtype=dtype)
        if model_args.model_init is not None:
            apply_model_init(model, load_model_config_json(model_args.model_init))
        return model
    dtype = "auto" if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
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
) -> StatePassingTrainer | None:
    """Train from parsed arguments (TRL's `main(script_args, training_args, model_args)`); returns the trainer, or
    `None` when `output_dir` holds a finished run (nothing is trained or rewritten)."""
    # 1. Where this launch starts, decided before anything is loaded or written (checkpoints.resume_point).
    resume = resume_point(training_args, model_args.model_name_or_path)
    if resume == FINISHED:
        logger.warning(
            f"{training_args.output_dir} holds a finished run ({FINISHED_FILE}): nothing to do. Set "
            "overwrite_output_dir: true to train it again from scratch, or choose another output_dir."
        )
        return None
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

    eval_documents = None
    if script_args.eval_data_files or script_args.dataset_eval_split:
        eval_documents = load_documents(
            dataset_name=script_args.dataset_name,
            data_files=script_args.eval_data_files,
            split=script_args.dataset_eval_split or "train",
            config=script_args.dataset_config,
        )

    trainer = StatePassingTrainer(
        model=model,
        args=training_args,
        train_dataset=documents,
        eval_dataset=eval_documents,
        processing_class=tokenizer,
        peft_config=peft_config_from(model_args),
    )
    if resume is not None:
        logger.warning(f"Resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)

    # Save, card, push.
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(base_model=model_args.model_name_or_path, dataset_name=script_args.dataset_name)
    if trainer.is_world_process_zero():  # written last: its presence means the run finished
        (Path(training_args.output_dir) / FINISHED_FILE).write_text(json.dumps(result.metrics, indent=2))
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="Post-trained with hf_longssm")
    return trainer


def main(argv: list[str] | None = None) -> StatePassingTrainer:
    """`hf-longssm train --config recipe.yaml [--key value ...]` (`argv` defaults to the command line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return train(*make_parser().parse_args_and_config(args))
