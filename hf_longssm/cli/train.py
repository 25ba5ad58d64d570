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

from ..hub import hub_id, push_folder_to_hub
from ..loading import apply_model_init, load_model, load_tokenizer
from ..modeling import register_model_code
from ..sources import COPYING, OFFLINE_CORPORA, load_documents
from ..synthetic import CopyingVocabulary
from ..tokenization import byte_tokenizer
from ..training import StatePassingConfig, StatePassingTrainer
from ..training.checkpoints import FINISHED, FINISHED_FILE, last_complete_checkpoint, resume_point
from ..training.output_lock import hold_output_dir
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
        register_model_code(spec.get("model_type"))  # a family whose code is another package's (fla)
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
    `None` when `output_dir` holds a finished run (nothing is trained or rewritten).

    The output folder is held for the whole run (`training.output_lock`): a second launch into it is refused. Every
    local result is written before anything is uploaded, and the upload happens once, last; a failed upload leaves a
    finished run that `hf-longssm push <output_dir>` uploads.
    """
    with hold_output_dir(training_args.output_dir, training_args.process_index == 0):
        return _train(script_args, training_args, model_args)


def _train(script_args, training_args, model_args):
    push = training_args.push_to_hub
    if push:
        check_push(training_args, model_args)
        # hf_longssm pushes once, after every local result is written; transformers' Trainer would create the repo
        # now and upload the folder at every save (`hub_strategy`), before any card exists.
        training_args.push_to_hub = False
    # 1. Where this launch starts, decided before anything is loaded or written (checkpoints.resume_point).
    resume = resume_point(training_args, model_args.model_name_or_path)
    if resume == FINISHED:
        hint = f" To upload it: {push_command(training_args, model_args)}." if push else ""
        last = last_complete_checkpoint(training_args.output_dir)
        if last is not None and training_args.max_steps > int(last.rsplit("-", 1)[1]):
            hint += (
                f" To train it on to max_steps={training_args.max_steps}: resume_from_checkpoint: {last} (into "
                "another output_dir, or this one with its train_results.json removed)."
            )
        logger.warning(
            f"{training_args.output_dir} holds a finished run ({FINISHED_FILE}): nothing to do. Set "
            f"overwrite_output_dir: true to train it again from scratch, or choose another output_dir.{hint}"
        )
        return None
    set_seed(training_args.seed)
    tokenizer = tokenizer_from_args(script_args, model_args)
    check_copying_run(script_args, training_args, tokenizer)
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

    # 2. Every local result first: weights, card, then the finished marker (its presence means the run finished).
    # `_internal_call`: transformers' `save_model` would otherwise push here too, before the card exists.
    trainer.save_model(training_args.output_dir, _internal_call=True)
    base_model = model_args.base_model_id or model_args.model_name_or_path
    trainer.create_model_card(base_model=base_model, dataset_name=script_args.dataset_name, license=model_args.license)
    if trainer.is_world_process_zero():
        (Path(training_args.output_dir) / FINISHED_FILE).write_text(json.dumps(result.metrics, indent=2))
    # 3. The upload, once, last.
    if push and trainer.is_world_process_zero():
        upload(training_args, model_args)
    return trainer


def check_copying_run(script_args: ScriptArguments, training_args: StatePassingConfig, tokenizer) -> None:
    """The copying source's documents (`hf_longssm.synthetic`) are byte-tokenizer ids and each fills one segment of
    `dataset_config` tokens: refuse a run that would read them as other tokens or cut them (a copy split from its
    source cannot be learned from a zero state), before anything trains."""
    if script_args.dataset_name != COPYING:
        return
    length = training_args.segment_length
    if str(script_args.dataset_config) != str(length):
        raise ValueError(
            f"{COPYING} with dataset_config={script_args.dataset_config!r} and segment_length={length}: each document "
            f'fills one segment of dataset_config tokens. Set dataset_config: "{length}".'
        )
    try:
        same_ids = CopyingVocabulary.from_tokenizer(tokenizer) == CopyingVocabulary.from_tokenizer(byte_tokenizer())
    except ValueError:
        same_ids = False
    if not same_ids:
        raise ValueError(
            f"{COPYING}'s documents are the byte tokenizer's ids (its EOS included): set tokenizer_name_or_path: byte "
            "and train a model with the byte vocabulary (vocab_size 257)."
        )
    streams = training_args.per_device_train_batch_size * training_args.world_size
    documents = OFFLINE_CORPORA[COPYING].SPLITS.get(script_args.dataset_train_split, (0,))[0]
    if documents % streams:
        raise ValueError(
            f"{COPYING}'s {documents} documents laid into {streams} streams (per_device_train_batch_size x processes) "
            f"would start streams inside a document. Use a batch size x processes that divides {documents} (a power "
            "of two)."
        )
    if training_args.state_init == "tbtt" and training_args.reset_state_on_eos:
        logger.warning(
            f"TBTT on {COPYING} with reset_state_on_eos: every segment starts a document after an EOS, so every "
            "state is reset and the run is the zero control. Set reset_state_on_eos: false to carry the state."
        )


def repo_id_of(args: StatePassingConfig) -> str:
    """`hub_model_id`, or the output folder's name (in the token's namespace), as transformers names it."""
    return args.hub_model_id or Path(args.output_dir).resolve().name


def push_command(args: StatePassingConfig, model_args: ModelArguments) -> str:
    """The `hf-longssm push` command that uploads this run as `push_to_hub` would."""
    command = f"hf-longssm push {args.output_dir} --repo_id {repo_id_of(args)}"
    command += " --private" if args.hub_private_repo else ""
    return command + (f" --base_model_id {model_args.base_model_id}" if model_args.base_model_id else "")


def check_push(args: StatePassingConfig, model_args: ModelArguments) -> None:
    """Refuse, before training, a push that could only fail or upload what it should not."""
    strategy = str(getattr(args.hub_strategy, "value", args.hub_strategy))
    if strategy != "every_save":
        raise ValueError(
            f"hub_strategy={strategy!r}: hf-longssm train uploads the finished run once, at its end, and no "
            "checkpoint. Drop hub_strategy (checkpoints stay local and resume from output_dir)."
        )
    if model_args.use_peft and not (model_args.base_model_id or hub_id(model_args.model_name_or_path)):
        raise ValueError(
            f"push_to_hub with LoRA on the local model {model_args.model_name_or_path!r}: the uploaded adapter could "
            "not be loaded anywhere else. Set base_model_id to the base model's Hub id, or push_to_hub: false."
        )


def upload(args: StatePassingConfig, model_args: ModelArguments) -> str:
    """Push the finished run's folder to `hub_model_id` (default: the folder's name in your namespace)."""
    repo_id = repo_id_of(args)
    try:
        return push_folder_to_hub(
            args.output_dir,
            repo_id,
            private=args.hub_private_repo,
            token=args.hub_token,
            commit_message="Post-trained with hf_longssm",
            base_model_id=model_args.base_model_id,
        )
    except Exception as err:
        raise RuntimeError(
            f"The run finished and everything is saved in {args.output_dir}, but the upload to {repo_id} failed "
            f"({type(err).__name__}: {err}). Retry it with: {push_command(args, model_args)}"
        ) from err


def main(argv: list[str] | None = None) -> StatePassingTrainer:
    """`hf-longssm train --config recipe.yaml [--key value ...]` (`argv` defaults to the command line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    trainer = train(*make_parser().parse_args_and_config(args))
    # Under `accelerate launch`, leave the process group explicitly once every rank is done: left to interpreter
    # shutdown, gloo's threads can abort a finished rank ("terminate called without an active exception"), which
    # fails the launch after a complete run.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return trainer
