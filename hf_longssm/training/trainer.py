"""`StatePassingTrainer`: post-train a Mamba-family model with a carried or sampled initial state."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..forward import forward_with_state
from ..hub import render_model_card
from ..loading import load_model
from ..modeling import get_architecture, kernel_availability, prepare_model, unwrap_model
from ..sources import is_offline
from .collator import DataCollatorForStatePassing
from .config import StatePassingConfig
from .data import SegmentDataset, build_segment_dataset
from .interventions import INTERVENTIONS


logger = logging.get_logger(__name__)

STATE_FILE = "hf_longssm_state_rank{rank}.pt"


def apply_default_lora_targets(model, peft_config):
    """Wrap `model` with LoRA, using hf_longssm's per-architecture targets when `peft_config` names none."""
    from peft import get_peft_model

    if getattr(peft_config, "target_modules", None) is None:
        peft_config.target_modules = list(get_architecture(model).lora_target_modules)
    targets = set(peft_config.target_modules) if not isinstance(peft_config.target_modules, str) else None
    if targets is not None:
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = sorted(targets - present)
        if missing:
            logger.warning(f"LoRA target_modules {missing} match no module of this model; present: {sorted(present)}.")
    return get_peft_model(model, peft_config)


class StatePassingTrainer(Trainer):
    """A [`~transformers.Trainer`] whose every training segment starts from the state chosen by
    `StatePassingConfig.state_init`, with that state kept per process and saved with every checkpoint.

    Args:
        model (`PreTrainedModel` or `str`): a Mamba, FalconMamba or Mamba-2 model, or a Hub id / local path.
        args ([`StatePassingConfig`], *optional*): the configuration.
        data_collator (*optional*): defaults to [`DataCollatorForStatePassing`].
        train_dataset: whole documents (`input_ids` of any length, or `text` with a tokenizer as `processing_class`),
            a `datasets` dataset (map-style or streaming), or a dataset from `hf_longssm.training.data`.
        eval_dataset (*optional*): the same kinds; evaluated segment by segment from a zero state.
        processing_class (*optional*): the tokenizer (its EOS joins documents).
        peft_config (`peft.PeftConfig`, *optional*): wrap the model with LoRA; the target modules default to the
            architecture's (`in_proj`, `x_proj` for Mamba and FalconMamba; `in_proj` for Mamba-2).
    """

    _tag_names = ["hf_longssm", "state-passing"]

    def __init__(
        self,
        model,
        args: StatePassingConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs: Any,
    ):
        # 1. Arguments
        if args is None:
            args = StatePassingConfig(output_dir="tmp_trainer")
        elif not isinstance(args, StatePassingConfig):
            raise TypeError("StatePassingTrainer needs a StatePassingConfig (it adds state_init, segment_length...).")

        # 2. Model: supported architecture, stateful mixers, optional LoRA
        if isinstance(model, str):
            model = load_model(model)
        get_architecture(model)
        if peft_config is not None:
            model = apply_default_lora_targets(model, peft_config)
        prepare_model(model)
        base = unwrap_model(model)
        kernels = kernel_availability()
        logger.info(f"hf_longssm kernels importable: {kernels}; CUDA tensors use them, others the torch path.")

        # 3. Data: documents -> streams -> segments
        eos_token_id = getattr(processing_class, "eos_token_id", None) if processing_class is not None else None
        if eos_token_id is None and processing_class is None:
            eos_token_id = base.config.eos_token_id
        if eos_token_id is None:
            raise ValueError(
                "The tokenizer has no eos_token_id: hf_longssm joins documents with EOS. Set tokenizer.eos_token "
                "(e.g. tokenizer.eos_token = '<|endoftext|>')."
            )
        num_streams = args.per_device_train_batch_size * args.world_size
        if train_dataset is not None:
            train_dataset = build_segment_dataset(
                train_dataset, args.segment_length, num_streams, eos_token_id, processing_class, args.text_column
            )
        if eval_dataset is not None:
            eval_streams = args.per_device_eval_batch_size * args.world_size
            eval_dataset = build_segment_dataset(
                eval_dataset, args.segment_length, eval_streams, eos_token_id, processing_class, args.text_column
            )
        if data_collator is None:
            data_collator = DataCollatorForStatePassing()

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )

        # 4. The intervention (carried state, fitted statistics, noise generator) and metrics, per process
        self.intervention = INTERVENTIONS[args.state_init](
            args, base.config.num_hidden_layers, seed=args.seed + self.args.process_index
        )
        self._metrics: dict[str, list[float]] = defaultdict(list)
        if hasattr(base, "add_model_tags"):
            base.add_model_tags(self._tag_names + [args.state_init.replace("_", "-")])

    # ----- data order ------------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.state_init == "tbtt" and isinstance(dataset, SegmentDataset):
            # Streams must stay on their rows: read segments in order (see hf_longssm.training.data).
            return SequentialSampler(dataset)
        return super()._get_train_sampler(train_dataset)

    # ----- loss ------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        shift_labels = inputs.pop("shift_labels", None)
        labels = inputs.pop("labels")
        shift_labels = labels if shift_labels is None else shift_labels
        kwargs = {}
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch

        if model.training:
            state = self.intervention.initial_state(model, inputs, self.state.global_step)
        else:  # evaluation: every segment from zero, the training state untouched
            state = self.intervention.zeros(model, inputs["input_ids"].shape[0], inputs["input_ids"].device)
        outputs, final_state = forward_with_state(
            model, inputs["input_ids"], state, shift_labels=shift_labels, **kwargs
        )
        if model.training:
            # Gradients stop at the segment boundary (TBTT / state passing); the graph is freed with the step.
            final_state = final_state.detach()
            self.intervention.observe(final_state, self.state.global_step)
            if self.args.log_state_norms:
                for layer_idx, norm in enumerate(final_state.norms().tolist()):
                    self._metrics[f"state_norm/layer_{layer_idx}"].append(norm)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and kwargs:
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prefix = "" if "loss" in logs or not any(k.startswith("eval_") for k in logs) else "eval_"
        metrics = {f"{prefix}{k}": sum(v) / len(v) for k, v in self._metrics.items() if v}
        self._metrics.clear()
        super().log({**logs, **metrics}, start_time)

    # ----- checkpoints -----------------------------------------------------------------------------------------
    def _state_payload(self) -> dict:
        return {
            "state_init": self.args.state_init,
            "global_step": self.state.global_step,
            **self.intervention.state_dict(),
        }

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        output_dir = os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, STATE_FILE.format(rank=self.args.process_index))
        # Write then rename: a run killed mid-write never leaves a truncated state next to good weights.
        torch.save(self._state_payload(), path + ".tmp")
        os.replace(path + ".tmp", path)

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        result = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is not None:
            self._load_carried_state(resume_from_checkpoint)
        return result

    def _load_carried_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE.format(rank=self.args.process_index))
        if not os.path.isfile(path):
            logger.warning(
                f"{path} not found: the carried state restarts from zero (was the run launched with "
                "another number of processes?)."
            )
            return
        payload = torch.load(path, map_location="cpu", weights_only=False)
        expected = self.args.per_device_train_batch_size
        if payload["batch_size"] is not None and payload["batch_size"] != expected:
            raise ValueError(
                f"The checkpoint carries a state for {payload['batch_size']} rows per process but "
                f"per_device_train_batch_size={expected}: resume with the batch size it was saved with."
            )
        if payload["state_init"] != self.args.state_init:
            logger.warning(f"Resuming a {payload['state_init']} checkpoint with state_init={self.args.state_init}.")
        self.intervention.load_state_dict(payload, unwrap_model(self.model).config, self.args.device)

    # ----- model card ------------------------------------------------------------------------------------------
    def create_model_card(
        self,
        model_name: str | None = None,
        base_model: str | None = None,
        dataset_name: str | None = None,
        results: list[dict] | None = None,
        table: str | None = None,
        plot: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write `README.md` in `output_dir`: hf_longssm's card (tags, settings, results, citations).

        Args:
            results (`list[dict]`, *optional*): this model's perplexity buckets (`start`, `end`, `perplexity`).
            table (`str`, *optional*): a markdown comparison table; plot: a PNG file name in `output_dir`.
        """
        if not self.is_world_process_zero():
            return

        config = unwrap_model(self.model).config
        args = self.args
        peft_config = getattr(self.model, "peft_config", {}).get("default")
        if base_model is None:
            name = getattr(peft_config, "base_model_name_or_path", None) or getattr(config, "_name_or_path", "") or ""
            base_model = name if name.count("/") == 1 and not os.path.exists(name) else None
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        card = render_model_card(
            model_name=model_name or os.path.basename(os.path.normpath(args.output_dir)),
            model_type=config.model_type,
            state_init=args.state_init,
            segment_length=args.segment_length,
            steps=self.state.global_step,
            tokens_seen=self.state.global_step * batch * args.segment_length,
            batch=f"{args.per_device_train_batch_size} × {args.world_size} (× {args.gradient_accumulation_steps})",
            learning_rate=args.learning_rate,
            repo_id=args.hub_model_id,
            base_model=base_model,
            adapter=peft_config is not None,
            datasets=[dataset_name] if dataset_name and "/" in dataset_name and not is_offline(dataset_name) else None,
            results=results,
            table=table,
            plot=plot,
        )
        card.save(os.path.join(args.output_dir, "README.md"))
