"""`StatePassingConfig`: `TrainingArguments` plus the state interventions."""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import os
import signal
import sys
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.utils import logging

from ..evaluation.copying import check_copying_lengths
from .distributed import check_sharding_arguments
from .eval_tasks import EVAL_TASKS
from .interventions import INTERVENTIONS


logger = logging.get_logger(__name__)

STATE_INITS = tuple(INTERVENTIONS)
# StatePassingConfig's own fields that only one intervention reads: set with another state_init, they are warned about.
_APPLIES_TO = {
    "noise_std": ("random_noise",),
    "fitted_noise_warmup_steps": ("fitted_noise",),
    "fitted_noise_update": ("fitted_noise",),
    "reset_state_on_eos": ("tbtt",),
}
# `TrainingArguments` fields that StatePassingTrainer would otherwise ignore or that would break the carried state:
# refused unless left at transformers' default (docs/trainer_options.md classifies every field).
_EVAL_ONLY = "StatePassingTrainer.evaluate() reports perplexity by position and never calls compute_metrics."
UNSUPPORTED_OPTIONS = {
    "label_smoothing_factor": (0.0, "the loss is the model's own next-token loss over each carried segment."),
    "label_names": (None, "the labels are the collator's next tokens of each stream."),
    "auto_find_batch_size": (False, "the streams are laid out for per_device_train_batch_size once, at the start."),
    "ignore_data_skip": (False, "a resume would read other tokens than the interrupted run (resumes are exact)."),
    "length_column_name": ("length", "segments all have segment_length tokens: there is nothing to group by."),
    "use_cache": (False, "training carries hf_longssm's own state; transformers' cache is for generation."),
    "dataloader_in_order": (True, "TBTT reads each stream's segments in order."),
    "bf16_full_eval": (False, "evaluation runs the model as training does; load it in that dtype instead."),
    "fp16_full_eval": (False, "evaluation runs the model as training does; load it in that dtype instead."),
    "prediction_loss_only": (False, _EVAL_ONLY),
    "eval_accumulation_steps": (None, _EVAL_ONLY),
    "eval_do_concat_batches": (True, _EVAL_ONLY),
    "include_for_metrics": ([], _EVAL_ONLY),
    "batch_eval_metrics": (False, _EVAL_ONLY),
    "eval_use_gather_object": (False, _EVAL_ONLY),
    "parallelism_config": (
        None,
        "context parallelism would split a segment over processes, each part starting from another process's chunk, "
        "and tensor parallelism of the stateful mixers is not implemented. Shard with `fsdp` / `deepspeed` "
        "(docs/scale_out.md).",
    ),
}
_STATE_DTYPES = ("float32", "bfloat16", "float16")


def exit_with_launcher() -> None:
    """Under `accelerate launch` / `torchrun` (Linux), die with the launcher: a killed launcher must not leave its
    workers training on their own, writing checkpoints nobody resumes, or joining the rendezvous of the next launch
    on the same port (which then hangs). Called before the process group is created."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(1)


@dataclass
class StatePassingConfig(TrainingArguments):
    r"""
    Configuration for [`StatePassingTrainer`]: post-training with an initial state closer to the states that long
    sequences reach (Buitrago Ruiz & Gu, 2025; Wang, 2024).

    Parameters that control the state:

        state_init (`str`, *optional*, defaults to `"state_passing"`):
            Initial state of every training segment: `"zero"` (plain training), `"random_noise"` (IID Gaussian with
            `noise_std`), `"fitted_noise"` (Gaussian with the per-layer, per-head mean/std of final states seen in
            training), `"state_passing"` (the detached final state of the previous batch, a different sequence) or
            `"tbtt"` (the detached final state of the previous segment of the same stream).
        noise_std (`float`, *optional*, defaults to `1.0`):
            Standard deviation of `"random_noise"`.
        fitted_noise_warmup_steps (`int`, *optional*, defaults to `20`):
            `"fitted_noise"`: optimizer steps trained from zero while the statistics are first gathered.
        fitted_noise_update (`str`, *optional*, defaults to `"running"`):
            `"running"` keeps adding every final state to the statistics; `"frozen"` stops after the warm-up.
        reset_state_on_eos (`bool`, *optional*, defaults to `True`):
            `"tbtt"`: zero the carried state on rows where a new document starts at the segment's first token.
            A stream's first segment always starts from zero.
        attention_state (`str`, *optional*, defaults to `"window"`):
            Hybrids (Mamba layers with attention layers): the keys and values the attention layers carry between
            segments, `"window"` (the last `attention_window`: bounded memory), `"none"` (attention sees its segment
            only) or `"full"` (every key: exact continuation, memory grows with the stream). Pure Mamba models have
            none. The noise inits start the attention part empty (it has no noise analogue).
        attention_window (`int`, *optional*):
            Keys kept under `attention_state="window"`; defaults to `segment_length`.
        state_dtype (`str`, *optional*, defaults to `"float32"`):
            dtype of carried SSM states (the scans run in float32, so float32 loses nothing between segments).
        log_state_norms (`bool`, *optional*, defaults to `True`):
            Log the mean L2 norm of the final SSM state of every layer (`state_norm/layer_{i}`).

    Parameters that control the data:

        segment_length (`int`, *optional*, defaults to `2048`):
            Tokens per training segment (the training context T).
        text_column (`str`, *optional*, defaults to `"text"`):
            Column holding raw text when the dataset has no `input_ids`.

    Parameters that control evaluation (`trainer.evaluate()`, and every `eval_steps` with `eval_strategy="steps"`):

        eval_max_length (`int`, *optional*, defaults to `16 * segment_length`):
            Tokens read from the start of each evaluation document, in segments of `segment_length` with the state
            carried from zero, as `evaluation.position_perplexity` does; shorter documents are skipped. Far past the
            training context is where post-training shows: the default reads 16 training contexts.
        eval_bucket_start (`int`, *optional*, defaults to `max(1, segment_length // 8)`):
            First edge of the log-spaced position buckets `[0, s), [s, 2s), ...` of `eval_ppl_<lo>_<hi>`.
        eval_plots (`bool`, *optional*, defaults to `True`):
            After every evaluation, write `output_dir/eval/perplexity_by_position.png` (one line per evaluation)
            and `output_dir/eval/history.json`; the last evaluation's table goes into the model card.
        eval_tasks (`list[str]`, *optional*, defaults to `[]`):
            Long-context tasks run at every evaluation beside the perplexity: `passkey` (depths 0.1, 0.5, 0.9),
            `babilong_qa1` ... `babilong_qa5` (hf_longssm's offline BABILong twin), `copying` (per-token copy
            accuracy of the synthetic copying task; the tokenizer needs single-character tokens). Each logs
            `<prefix>_<task>_acc_<length>` and `<prefix>_<task>_acc` (the mean), and the last evaluation's
            accuracies go into the model card as a table per task.
        eval_task_lengths (`list[int]`, *optional*, defaults to `[segment_length, 4 * segment_length,
            16 * segment_length]`):
            Prompt lengths in tokens of `eval_tasks` (strictly increasing).
        eval_task_trials (`int`, *optional*, defaults to `5`):
            Seeded prompts per length (and depth) of each task: the same prompts at every evaluation.

    Parameters that control the run folder:

        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            `hf-longssm train` resumes from the newest complete checkpoint in `output_dir`, does nothing for a
            finished run, and refuses a folder holding another run's model. `True` starts over (earlier checkpoints
            are deleted).

    > [!NOTE]
    > Defaults that differ from [`~transformers.TrainingArguments`]: `remove_unused_columns=False` (the collator's
    > `reset_mask` must reach the trainer), `logging_steps=10`, `ddp_find_unused_parameters=False` (every
    > parameter is used), `gradient_checkpointing=False`. Gradient
    > checkpointing is exact with carried states (they are detached between segments) and may be turned on.
    """

    # ----- state -----
    state_init: str = field(
        default="state_passing",
        metadata={"help": "Initial state of every training segment.", "choices": list(STATE_INITS)},
    )
    noise_std: float = field(default=1.0, metadata={"help": "Standard deviation of the random_noise initial state."})
    fitted_noise_warmup_steps: int = field(
        default=20, metadata={"help": "fitted_noise: steps trained from zero while statistics are first gathered."}
    )
    fitted_noise_update: str = field(
        default="running",
        metadata={
            "help": "fitted_noise: keep updating or freeze the statistics.",
            "choices": ["running", "frozen"],
        },
    )
    reset_state_on_eos: bool = field(
        default=True, metadata={"help": "tbtt: zero the carried state where a new document starts a segment."}
    )
    state_dtype: str = field(
        default="float32", metadata={"help": "dtype of carried SSM states.", "choices": list(_STATE_DTYPES)}
    )
    attention_state: str = field(
        default="window",
        metadata={
            "help": "Hybrids: the attention layers' keys carried between segments (window: the last "
            "attention_window; none; full: all, memory grows).",
            "choices": ["window", "none", "full"],
        },
    )
    attention_window: int | None = field(
        default=None, metadata={"help": "Hybrids, attention_state=window: keys kept (default segment_length)."}
    )
    log_state_norms: bool = field(default=True, metadata={"help": "Log per-layer norms of the final SSM states."})
    # ----- data -----
    segment_length: int = field(default=2048, metadata={"help": "Tokens per training segment (training context)."})
    text_column: str = field(default="text", metadata={"help": "Column with raw text when there is no input_ids."})
    # ----- evaluation -----
    eval_max_length: int | None = field(
        default=None, metadata={"help": "Tokens per evaluation document (default 16 * segment_length)."}
    )
    eval_bucket_start: int | None = field(
        default=None, metadata={"help": "First edge of the log-spaced position buckets (default segment_length // 8)."}
    )
    eval_plots: bool = field(
        default=True, metadata={"help": "Plot perplexity by position into output_dir/eval after every evaluation."}
    )
    eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "Tasks run at every evaluation: passkey, babilong_qa1 ... babilong_qa5."},
    )
    eval_task_lengths: list[int] | None = field(
        default=None, metadata={"help": "Prompt lengths of eval_tasks (default: 1, 4 and 16 segment lengths)."}
    )
    eval_task_trials: int = field(default=5, metadata={"help": "Seeded prompts per length of each eval task."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in output_dir: earlier checkpoints are deleted, a finished run is retrained."},
    )
    # ----- overridden TrainingArguments defaults -----
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the collator's reset_mask (must stay False)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X updates steps."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every parameter of a Mamba model is used in each step: no extra DDP pass."}
    )

    # transformers pickles these arguments into `training_args.bin` in every checkpoint and in the output folder,
    # and `push_to_hub` uploads that file: a Hub token must never be inside it. Pickling drops `hub_token`; a deep copy
    # or a copy keeps it.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["hub_token"] = None
        return state

    def __copy__(self) -> StatePassingConfig:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict) -> StatePassingConfig:
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def __post_init__(self):
        exit_with_launcher()  # before TrainingArguments creates the process group
        super().__post_init__()
        if self.state_init not in STATE_INITS:
            raise ValueError(f"state_init={self.state_init!r} is not one of {list(STATE_INITS)}.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_steps == 0:
            raise ValueError(
                "max_steps=0 trains nothing: set max_steps > 0, or -1 to train for num_train_epochs instead."
            )
        if self.segment_length < 1:
            raise ValueError(f"segment_length must be >= 1, got {self.segment_length}.")
        if self.eval_max_length is None:
            self.eval_max_length = 16 * self.segment_length
        if self.eval_bucket_start is None:
            self.eval_bucket_start = max(1, self.segment_length // 8)
        if self.eval_max_length < 2 or self.eval_bucket_start < 1:
            raise ValueError(
                f"eval_max_length must be >= 2 and eval_bucket_start >= 1, got {self.eval_max_length} and "
                f"{self.eval_bucket_start}."
            )
        unknown = [task for task in self.eval_tasks if task not in EVAL_TASKS]
        if unknown:
            raise ValueError(f"eval_tasks {unknown} are not tasks; choose from {list(EVAL_TASKS)}.")
        if self.eval_task_lengths is None:
            self.eval_task_lengths = [self.segment_length, 4 * self.segment_length, 16 * self.segment_length]
        lengths = list(self.eval_task_lengths)
        if not lengths or lengths != sorted(set(lengths)) or lengths[0] < 1 or self.eval_task_trials < 1:
            raise ValueError(
                f"eval_task_lengths must be strictly increasing positive lengths and eval_task_trials >= 1, got "
                f"{lengths} and {self.eval_task_trials}."
            )
        if "copying" in self.eval_tasks:
            check_copying_lengths(lengths)
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}.")
        if self.fitted_noise_update not in ("running", "frozen"):
            raise ValueError(f"fitted_noise_update must be 'running' or 'frozen', got {self.fitted_noise_update!r}.")
        if self.attention_state not in ("window", "none", "full"):
            raise ValueError(f"attention_state must be 'window', 'none' or 'full', got {self.attention_state!r}.")
        if self.attention_window is not None and self.attention_window < 1:
            raise ValueError(f"attention_window must be >= 1, got {self.attention_window}.")
        if self.state_dtype not in _STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {list(_STATE_DTYPES)}, got {self.state_dtype!r}.")
        if self.state_init == "fitted_noise" and self.fitted_noise_warmup_steps < 1:
            raise ValueError("fitted_noise needs fitted_noise_warmup_steps >= 1 to gather its first statistics.")
        for name, (default, why) in UNSUPPORTED_OPTIONS.items():
            value = getattr(self, name, default)
            if value != default and not (name == "dataloader_in_order" and self.state_init != "tbtt"):
                raise ValueError(f"{name}={value!r} is not supported by StatePassingTrainer: {why}")
        for name, inits in _APPLIES_TO.items():
            default = type(self).__dataclass_fields__[name].default
            if self.state_init not in inits and getattr(self, name) != default:
                # Warned, not refused: one config shared by runs of every state_init (a sweep) stays valid.
                logger.warning(
                    f"{name}={getattr(self, name)!r} has no effect with state_init={self.state_init!r} (it applies to "
                    f"{', '.join(inits)})."
                )
        if self.state_init == "tbtt" and getattr(self.accelerator_config, "split_batches", False):
            raise ValueError(
                "accelerator_config.split_batches with TBTT: each process would get rows of other streams at each "
                "step, so a segment would start from another stream's state. Leave split_batches false (the default)."
            )
        if getattr(self, "train_sampling_strategy", "random") == "group_by_length":
            raise ValueError(
                "train_sampling_strategy='group_by_length' is not supported by StatePassingTrainer: every segment has "
                "segment_length tokens, and regrouping them would move streams off their rows. Use 'random'."
            )
        if self.remove_unused_columns:
            raise ValueError(
                "StatePassingTrainer needs remove_unused_columns=False: the collator's reset_mask must reach it."
            )
        check_sharding_arguments(self)


def refuse_unused_trainer_arguments(model, kwargs: dict) -> None:
    """`Trainer` arguments `StatePassingTrainer` would silently ignore are refused, naming what to do instead."""
    if kwargs.get("model_init") is not None or model is None:
        raise ValueError(
            "model_init is not supported by StatePassingTrainer (the carried state is laid out for one model): pass "
            "the model as `model=`."
        )
    if kwargs.get("compute_metrics") is not None:
        raise ValueError(
            "compute_metrics is not called by StatePassingTrainer.evaluate(), which reads each held-out document "
            "with the state carried and reports perplexity by position (eval_ppl_<lo>_<hi>); drop it."
        )
