"""`StatePassingTrainer`: post-train a Mamba-family model with a carried or sampled initial state."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput
from transformers.utils import logging

from ..evaluation.perplexity import PositionPerplexity, log_buckets, position_metrics
from ..evaluation.text import documents_to_input_ids
from ..forward import check_token_ids, forward_with_state
from ..hub import base_model_license, drop_peft_local_card, hub_id, render_model_card, results_table
from ..loading import load_model, mamba_ssm_vocab_size
from ..modeling import (
    attention_layers,
    get_architecture,
    kernel_availability,
    prepare_model,
    ssm_layers,
    state_kinds,
    unwrap_model,
)
from ..sources import is_offline
from ..synthetic import CopyingVocabulary
from .callbacks import EvalPlotCallback
from .checkpoints import (
    TRAINER_STATE_FILE,
    at_max_steps,
    check_resume_settings,
    last_complete_checkpoint,
    load_renamed_weights,
    load_state_file,
    mark_complete,
    missing_files,
    read_marker,
    rotate_checkpoints,
    run_settings,
    save_state_file,
    unmark,
)
from .collator import DataCollatorForStatePassing
from .config import StatePassingConfig, refuse_unused_trainer_arguments
from .data import SegmentDataset, build_segment_dataset, check_loader_settings
from .distributed import (
    check_checkpoint_sharding,
    check_trainable_placement,
    enable_fsdp_on_cpu,
    position_nll_sum_across_processes,
    save_gathered_model,
)
from .eval_tasks import run_eval_task, task_metrics, task_tables
from .interventions import INTERVENTIONS
from .lora import apply_default_lora_targets
from .output_lock import hold_output_dir


logger = logging.get_logger(__name__)


def attention_setting(args: StatePassingConfig) -> str:
    """A hybrid's attention policy as its card states it: `"window (2048 keys)"`, `"none"` or `"full"`."""
    window = f" ({args.attention_window or args.segment_length} keys)" if args.attention_state == "window" else ""
    return args.attention_state + window


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

    _tag_names = ["hf_longssm"]  # plus the method's own tag (`state-passing`, `tbtt`, ...), added per run

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
        # 1. Arguments (StatePassingConfig has tied this process to its launcher, see `exit_with_launcher`)
        if args is None:
            args = StatePassingConfig(output_dir="tmp_trainer")
        elif not isinstance(args, StatePassingConfig):
            raise TypeError("StatePassingTrainer needs a StatePassingConfig (it adds state_init, segment_length...).")

        # 2. Model: supported architecture, stateful mixers, optional LoRA
        refuse_unused_trainer_arguments(model, kwargs)
        if isinstance(model, str):
            model = load_model(model)
        get_architecture(model)
        check_trainable_placement(unwrap_model(model))
        if peft_config is not None:
            model = apply_default_lora_targets(model, peft_config)
        prepare_model(model)
        base = unwrap_model(model)
        logger.info(f"hf_longssm kernels importable: {kernel_availability()}; CUDA tensors use them, others not.")

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
            if isinstance(train_dataset, SegmentDataset):  # checked once here, not per step on the device
                check_token_ids(train_dataset.streams, base.get_input_embeddings().num_embeddings)
            check_loader_settings(train_dataset, args)
        # Evaluation documents are read whole from their start (up to eval_max_length), not cut into segments.
        self._eval_input_ids = None
        if eval_dataset is not None:
            self._eval_input_ids = self._eval_rows(eval_dataset, processing_class, args)
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

        # 4. The intervention (carried state, fitted statistics, noise generator) and metrics, per process. The fitted
        # statistics cover each accumulating state kind of each stateful layer.
        accumulating = [kind.name for kind in state_kinds(base.config) if not kind.window]
        if not accumulating and args.state_init in ("random_noise", "fitted_noise"):
            raise ValueError(
                f"state_init={args.state_init!r}: {get_architecture(base).display_name}'s layers carry only windows "
                "of recent inputs, which every init starts at zero; there is no accumulated state to perturb. Use "
                "'zero', 'state_passing' or 'tbtt'."
            )
        self.intervention = INTERVENTIONS[args.state_init](
            args, len(ssm_layers(base.config)) * len(accumulating), seed=args.seed + self.args.process_index
        )
        # Buffered per mode and flushed by `log` (TRL's way), so evaluation never relabels training values.
        self._state_norms: dict[str, tuple[torch.Tensor | None, int]] = {"train": (None, 0), "eval": (None, 0)}
        self._card_kwargs: dict[str, Any] = {}
        self._last_eval_buckets: list[dict] | None = None
        self._last_task_results: dict[str, list[dict]] = {}
        if self.args.eval_tasks and self.processing_class is None:
            raise ValueError(
                f"eval_tasks={self.args.eval_tasks} builds prompts from text: pass the tokenizer "
                "(processing_class=) to StatePassingTrainer."
            )
        if "copying" in self.args.eval_tasks:  # refused now, not at the first evaluation after steps of training
            CopyingVocabulary.from_tokenizer(self.processing_class)
        if self._eval_input_ids is not None and args.eval_plots:
            self.add_callback(EvalPlotCallback())
        if hasattr(base, "add_model_tags"):
            base.add_model_tags(self._tag_names + [args.state_init.replace("_", "-")])

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu(self)  # accelerate would run a CPU request for FSDP as DDP (see training.distributed)

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
        # transformers' convention: `labels` are unshifted (the model shifts them), `shift_labels` already shifted.
        # DataCollatorForStatePassing gives both; the shifted ones keep the prediction across the segment boundary.
        shift_labels, labels = inputs.pop("shift_labels", None), inputs.pop("labels", None)
        if shift_labels is None and labels is None:
            raise ValueError("The batch has no labels or shift_labels: use DataCollatorForStatePassing.")
        kwargs = {"shift_labels": shift_labels} if shift_labels is not None else {"labels": labels}
        if shift_labels is None:
            logger.warning_once(
                "The batch has unshifted `labels` only: the token after each segment is not scored. "
                "DataCollatorForStatePassing adds `shift_labels`, which score it."
            )
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch

        if model.training:
            state = self.intervention.initial_state(model, inputs, self.state.global_step)
        else:  # evaluation: every segment from zero, the training state untouched
            state = self.intervention.zeros(model, inputs["input_ids"].shape[0], inputs["input_ids"].device)
        outputs, final_state = forward_with_state(model, inputs["input_ids"], state, **kwargs)
        # Gradients stop at the segment boundary (TBTT / state passing); the graph is freed with the step.
        final_state = final_state.detach()
        if model.training:
            self.intervention.observe(final_state, self.state.global_step)
        if self.args.log_state_norms:  # summed on the device: read back (one sync) only when `log` flushes
            mode = "train" if model.training else "eval"
            norms = final_state.norms()
            total, count = self._state_norms[mode]
            self._state_norms[mode] = (norms if total is None else total + norms, count + 1)
        loss = outputs.loss
        if self.args.average_tokens_across_devices and "num_items_in_batch" in kwargs:
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        total, count = self._state_norms[mode]
        self._state_norms[mode] = (None, 0)
        means = [] if total is None else (total / count).tolist()
        metrics = {f"{prefix}state_norm/layer_{layer_idx}": norm for layer_idx, norm in enumerate(means)}
        super().log({**logs, **metrics}, start_time)

    # ----- evaluation: perplexity by position far past the training context -----------------------------------------
    @staticmethod
    def _eval_rows(documents, tokenizer, args) -> torch.LongTensor:
        return documents_to_input_ids(documents, tokenizer, args.eval_max_length, text_column=args.text_column)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Perplexity by position over the evaluation documents, each read from a zero state at its start in segments
        of `segment_length` with the state carried (as `evaluation.position_perplexity`), up to `eval_max_length`.

        Returns (and logs) `<prefix>_loss` (mean NLL of every scored position), `<prefix>_ppl_<lo>_<hi>` per
        log-spaced position bucket, and `<prefix>_far_near_ratio`: the last bucket's perplexity over that of the
        bucket holding position `segment_length` (1.0: no degradation past the training context). Each process
        scores its share of the documents; the sums are added across processes. The training state (carried
        state, statistics, noise generator, data order) is not touched.
        """
        input_ids = (
            self._eval_input_ids
            if eval_dataset is None
            else self._eval_rows(eval_dataset, self.processing_class, self.args)
        )
        if input_ids is None:
            raise ValueError("StatePassingTrainer.evaluate needs eval_dataset (documents, as train_dataset takes).")
        start_time = time.time()
        total = position_nll_sum_across_processes(self, input_ids)
        result = PositionPerplexity(nll=(total / input_ids.shape[0]).float(), num_sequences=input_ids.shape[0])
        buckets = result.perplexity(log_buckets(len(result.nll), self.args.eval_bucket_start))
        metrics = position_metrics(result, buckets, self.args.segment_length, metric_key_prefix)
        # Every process runs the same seeded prompts (a sharded model needs all of them in each forward).
        for task in self.args.eval_tasks:
            rows = run_eval_task(
                self.model, self.processing_class, task, self.args.eval_task_lengths,
                num_trials=self.args.eval_task_trials, segment_length=self.args.segment_length,
                attention_state=self.args.attention_state, attention_window=self.args.attention_window,
            )  # fmt: skip
            metrics.update(task_metrics(task, rows, metric_key_prefix))
            self._last_task_results[task] = rows
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start_time, 4)
        self._last_eval_buckets = buckets
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ----- checkpoints (layout and completeness rules: hf_longssm.training.checkpoints) -----------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`, resuming only from complete checkpoints, one run per `output_dir`.

        `resume_from_checkpoint=True` takes the newest *complete* checkpoint of `output_dir` (newer incomplete ones,
        left by a run killed while saving, are skipped with a warning); a path must exist and be complete. A
        checkpoint already at `max_steps` (the run was killed between its last save and its end) is loaded and
        nothing is trained. The output folder is locked while training (`output_lock`): a second run started into
        it is refused.
        """
        with hold_output_dir(self.args.output_dir, self.args.process_index == 0):
            if resume_from_checkpoint is True:
                resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
            elif resume_from_checkpoint:
                missing = missing_files(resume_from_checkpoint)
                if missing:
                    last = last_complete_checkpoint(Path(resume_from_checkpoint).parent)
                    raise ValueError(
                        f"Cannot resume from {resume_from_checkpoint}: missing {missing} (not found, or interrupted "
                        f"while saving). The newest complete checkpoint there is {last}."
                    )
            if resume_from_checkpoint:
                check_checkpoint_sharding(self, resume_from_checkpoint)
            if resume_from_checkpoint and at_max_steps(resume_from_checkpoint, self.args.max_steps):
                return self._finish_from(resume_from_checkpoint)
            return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _finish_from(self, checkpoint: str) -> TrainOutput:
        """The run ended at this checkpoint: take its weights, state and carried state, train nothing."""
        logger.warning(f"{checkpoint} is at max_steps={self.args.max_steps}: the run is complete, nothing to train.")
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_FILE))
        self._load_carried_state(checkpoint)
        losses = [log["loss"] for log in self.state.log_history if "loss" in log]
        train_loss = sum(losses) / len(losses) if losses else float("nan")
        metrics = {"train_loss": train_loss, "epoch": self.state.epoch, "resumed_at_max_steps": True}
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # transformers saves nothing here under FSDP's sharded state dict: the model is gathered and written whole,
        # except inside a checkpoint (which holds the shards).
        if getattr(self, "_checkpoint_saving", False) or not save_gathered_model(self, output_dir):
            super().save_model(output_dir, _internal_call)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not load_renamed_weights(model if model is not None else self.model, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self._save_weights(output_dir, state_dict)
        drop_peft_local_card(output_dir or self.args.output_dir)

    def _save_weights(self, output_dir: str | None, state_dict: dict | None) -> None:
        # peft's `save_embedding_layers="auto"` compares the vocabulary with the base's config.json; a mamba_ssm
        # checkpoint's holds the unpadded size (50277, loaded padded to 50280), so every adapter would carry a copy of
        # the unchanged embedding. Say what is true: the vocabulary is the loaded one.
        model = self.accelerator.unwrap_model(self.model)
        peft_config = getattr(model, "peft_config", {}).get("default")
        base = getattr(peft_config, "base_model_name_or_path", None)
        if not base or mamba_ssm_vocab_size(base) != model.config.vocab_size:
            return super()._save(output_dir, state_dict)
        targeted = hasattr(model.get_input_embeddings(), "base_layer")  # a LoRA target: peft decides as it would
        save_embedding_layers = "auto" if targeted else False
        model.save_pretrained = functools.partial(
            type(model).save_pretrained, model, save_embedding_layers=save_embedding_layers
        )
        try:
            super()._save(output_dir, state_dict)
        finally:
            del model.save_pretrained

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial=trial)
        checkpoint = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(checkpoint, exist_ok=True)
        if self.args.should_save:
            unmark(checkpoint)
        payload = {**run_settings(self.args), "global_step": self.state.global_step, **self.intervention.state_dict()}
        save_state_file(checkpoint, self.args.process_index, payload)
        # transformers would rotate inside its save, possibly deleting the last complete checkpoint before this one
        # is complete: rotate here instead, once the marker is written.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        self._checkpoint_saving = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit, self._checkpoint_saving = limit, False
        self.accelerator.wait_for_everyone()  # every process's state file is written
        if self.args.should_save:
            mark_complete(checkpoint, run_settings(self.args), self.state.global_step)
            rotate_checkpoints(run_dir, limit, keep=self.state.best_model_checkpoint)

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
        check_resume_settings(checkpoint, read_marker(checkpoint) or {}, run_settings(self.args))
        payload = load_state_file(checkpoint, self.args.process_index)
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
        license: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write `README.md` in `output_dir`: hf_longssm's card (tags, settings, results, citations).

        Args:
            results (`list[dict]`, *optional*): this model's perplexity buckets (`start`, `end`, `perplexity`).
            table (`str`, *optional*): a markdown comparison table; plot: a PNG file name in `output_dir`.
            base_model (`str`, *optional*): the base model's Hub id (a local path is left out of the metadata).
            license (`str`, *optional*): the card's licence; defaults to the base model card's, else none is stated.

        `push_to_hub` calls this again with only `model_name`: what an earlier call gave (dataset, results, table,
        plot, base model) is kept, so the pushed card is the one written after training.
        """
        if not self.is_world_process_zero():
            return
        given = dict(
            model_name=model_name,
            base_model=base_model,
            dataset_name=dataset_name,
            results=results,
            table=table,
            plot=plot,
            license=license,
        )
        self._card_kwargs.update({k: v for k, v in given.items() if v is not None})
        model_name, base_model, dataset_name, results, table, plot, license = (self._card_kwargs.get(k) for k in given)
        if results is None and self._last_eval_buckets is not None:  # the last evaluation while training
            results = self._last_eval_buckets
            table = table or results_table({"perplexity": results})
        if self._last_task_results:  # the long-context tasks of the last evaluation, a table each
            table = "\n\n".join(t for t in (table, task_tables(self._last_task_results)) if t)

        config = unwrap_model(self.model).config
        args = self.args
        peft_config = getattr(self.model, "peft_config", {}).get("default")
        source = getattr(peft_config, "base_model_name_or_path", None) or getattr(config, "_name_or_path", None)
        if base_model is None:
            base_model = hub_id(source)
        if license is None:
            license = base_model_license(source) or base_model_license(base_model)
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
            datasets=[dataset_name] if dataset_name and not is_offline(dataset_name) else None,
            license=license,
            results=results,
            table=table,
            plot=plot,
            attention=attention_setting(args) if attention_layers(config) else None,
        )
        card.save(os.path.join(args.output_dir, "README.md"))
