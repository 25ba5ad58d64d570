"""Post-train a Mamba-family model with state passing (or another state intervention), then save, card, push.

    accelerate launch [--config_file recipes/accelerate_configs/multi_gpu.yaml] recipes/post_train_sp.py \
        --config recipes/mamba2-130m/sp/config_full.yaml [--any_key value ...]

Also runs as plain `python recipes/post_train_sp.py --config ...`. Command-line flags override the YAML; unknown
YAML keys are refused. Resumes from the last checkpoint in `output_dir` when there is one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from hf_longssm import StatePassingConfig, StatePassingTrainer
from hf_longssm.corpus import load_offline_books, neox_tokenizer
from hf_longssm.scripts import ModelArguments, RecipeParser, ScriptArguments, load_model_config_json
from hf_longssm.tokenization import ByteTokenizer


logger = logging.get_logger(__name__)
OFFLINE_DATASETS = {"hf_longssm/offline-shakespeare": load_offline_books}


def load_tokenizer(script_args: ScriptArguments, model_args: ModelArguments):
    name = script_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name == "byte":
        return ByteTokenizer()
    if name == "hf_longssm/gpt-neox-20b":
        return neox_tokenizer()
    if name is None:
        raise ValueError("A model built from model_config needs tokenizer_name_or_path ('byte' or a tokenizer).")
    return AutoTokenizer.from_pretrained(name)


def load_documents(script_args: ScriptArguments):
    import datasets

    if script_args.data_files:
        files = script_args.data_files
        if all(f.endswith(".txt") for f in files):  # one document per text file
            return datasets.Dataset.from_dict({"text": [Path(f).read_text(encoding="utf-8") for f in files]})
        return datasets.load_dataset("json", data_files=files, split="train", streaming=script_args.dataset_streaming)
    if script_args.dataset_name in OFFLINE_DATASETS:
        return OFFLINE_DATASETS[script_args.dataset_name]()[script_args.dataset_train_split]
    if script_args.dataset_name is None:
        raise ValueError("Give dataset_name (Hub id or hf_longssm/offline-shakespeare) or data_files.")
    return datasets.load_dataset(
        script_args.dataset_name,
        script_args.dataset_config,
        split=script_args.dataset_train_split,
        streaming=script_args.dataset_streaming,
    )


def load_model(model_args: ModelArguments):
    dtype = getattr(torch, model_args.torch_dtype)
    if model_args.model_config is not None:
        spec = load_model_config_json(model_args.model_config)
        config = AutoConfig.for_model(**spec)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=dtype)


def peft_config_from(model_args: ModelArguments):
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


def main(script_args: ScriptArguments, training_args: StatePassingConfig, model_args: ModelArguments):
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(script_args, model_args)
    model = load_model(model_args)
    documents = load_documents(script_args)

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
    base_model = model_args.model_name_or_path
    trainer.create_model_card(base_model=base_model, dataset_name=script_args.dataset_name)
    (Path(training_args.output_dir) / "train_results.json").write_text(json.dumps(result.metrics, indent=2))
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="Post-trained with hf_longssm")
    return trainer


if __name__ == "__main__":
    parser = RecipeParser((ScriptArguments, StatePassingConfig, ModelArguments))
    main(*parser.parse_args_and_config(sys.argv[1:]))
