"""Sharded training (FSDP2, DeepSpeed ZeRO) of the stateful mixers: what accelerate is asked for, and what it gets.

The carried states are per-process activations, not parameters: every sharding mode leaves them whole on their
process (the intervention holds them, `checkpoints.py` saves one file per process). What sharding changes is how the
mixers' weights reach them:

* FSDP2 (`fsdp_config={"version": 2, ...}`) gathers a wrapped block's parameters before its forward, so the mixers'
  direct reads of `conv1d.weight` see whole tensors when the block (`MambaBlock`, `Mamba2Block`) is the wrapped unit.
  accelerate gives FSDP only to accelerator processes: on CPU processes (gloo) it would silently train with DDP
  (`trainer.is_fsdp_enabled` False, the model a `DistributedDataParallel`). torch's FSDP2 itself runs on gloo, so
  `enable_fsdp_on_cpu` gives the CPU processes the FSDP type accelerate's own code path then prepares, saves and
  loads, exactly as on GPUs. This is what makes the FSDP2 tests run on a CPU machine.
* DeepSpeed ZeRO-3 gathers a module's own parameters before its forward, and a parameter of another module read
  inside it (the mixers read their `conv1d`'s weight without calling it) when it is first accessed (DeepSpeed's
  external parameters): nothing to declare. ZeRO-2 leaves the weights whole. DeepSpeed runs on CPU processes too
  (its CPU accelerator, gloo), from a launcher config or the `deepspeed` training argument.
* FSDP1 is deprecated by transformers (5.25) and not supported: refused, with the FSDP2 setting to use.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from transformers.utils import logging

from ..evaluation.perplexity import position_nll_sum


logger = logging.get_logger(__name__)


def fsdp_requested(args) -> bool:
    """FSDP asked for by the training arguments (`fsdp`) or by the launcher (an `accelerate launch` FSDP config)."""
    return bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_version(args) -> int:
    if args.fsdp:
        return int(args.fsdp_plugin_args.get("fsdp_version", 2))
    return int(os.environ.get("FSDP_VERSION", "1"))  # accelerate's own default for a launcher config


def check_sharding_arguments(args) -> None:
    """Refuse sharding settings hf_longssm does not run, before any process starts training."""
    if fsdp_requested(args) and fsdp_version(args) != 2:
        raise ValueError(
            "FSDP1 is deprecated by transformers and not supported by hf_longssm: use FSDP2, `fsdp_config: "
            "{version: 2}` in the training arguments or `fsdp_version: 2` in the accelerate config "
            "(recipes/accelerate_configs/fsdp2.yaml)."
        )


def enable_fsdp_on_cpu(trainer) -> None:
    """Called right after `Trainer.create_accelerator_and_postprocess`: give CPU processes the FSDP2 that was asked for
    instead of the DDP accelerate would fall back to."""
    state = trainer.accelerator.state
    if trainer.is_fsdp_enabled or not fsdp_requested(trainer.args):
        return
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise ValueError(
            f"FSDP was requested but accelerate set up {state.distributed_type}: launch the run with several "
            "processes (accelerate launch / torchrun), or drop `fsdp`."
        )
    plugin = (
        FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
        if trainer.args.fsdp
        else FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* variables
    )
    if plugin.fsdp_version != 2:
        check_sharding_arguments(trainer.args)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # what accelerate's own code does
    trainer.is_fsdp_enabled = True
    logger.info("FSDP2 on CPU processes (gloo): the model is sharded with torch's fully_shard.")


def is_sharded(trainer) -> bool:
    """Parameters are gathered collectively in every forward (FSDP, ZeRO-3): all processes must run as many."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3)


def position_nll_sum_across_processes(trainer, input_ids: torch.LongTensor) -> torch.Tensor:
    """`position_nll_sum` over all rows of `input_ids`, each process scoring every `world_size`-th row, summed.

    Under FSDP or ZeRO-3 every forward gathers weights collectively, so every process must run as many: one with fewer
    batches than the others runs the missing ones on a copy of the first row and drops the result.
    """
    args = trainer.args
    share = input_ids[args.process_index :: args.world_size]
    attention = {"attention_state": args.attention_state, "attention_window": args.attention_window}
    total = position_nll_sum(trainer.model, share, args.segment_length, batch_size=args.eval_batch_size, **attention)
    if is_sharded(trainer):
        most = math.ceil(math.ceil(len(input_ids) / args.world_size) / args.eval_batch_size)
        for _ in range(most - math.ceil(len(share) / args.eval_batch_size)):
            position_nll_sum(trainer.model, input_ids[:1], args.segment_length, **attention)
    return trainer.accelerator.reduce(total.to(args.device), reduction="sum").double().cpu()


def save_gathered_model(trainer, output_dir: str | None) -> bool:
    """Under FSDP with a sharded state dict, gather the whole model (every process takes part) and save it from the
    main process, as `save_model` does for one process. Returns whether it did (False: not that case)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if not trainer.is_fsdp_enabled or plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        return False
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # full, on the main process's CPU
    if trainer.args.should_save:
        trainer._save(output_dir or trainer.args.output_dir, state_dict=state_dict)
    return True


def check_trainable_placement(model) -> None:
    """Refuse training a model whose weights accelerate offloads (`device_map` with "disk", or "cpu" beside GPUs):
    offloaded weights are loaded for each forward and dropped after it, so their updates would be lost."""
    devices = {str(device) for device in (getattr(model, "hf_device_map", None) or {}).values()}
    if "disk" in devices or ("cpu" in devices and len(devices) > 1):
        raise ValueError(
            f"The model was loaded with a device_map that offloads weights ({sorted(devices)}): their updates would "
            "be lost. device_map offload is for evaluation and generation; to train a model that does not fit one "
            "device, shard it with FSDP2 or DeepSpeed ZeRO-3 (docs/scale_out.md)."
        )


def check_checkpoint_sharding(trainer, checkpoint: str) -> None:
    """A checkpoint resumes under the sharding it was saved with: refuse the other way round with the reason."""
    saved_fsdp = any(Path(checkpoint).glob("pytorch_model_fsdp*"))
    if trainer.is_fsdp_enabled and not saved_fsdp:
        raise ValueError(
            f"{checkpoint} was saved without FSDP, and this run uses FSDP: resume it with the launch it was saved "
            "with, or start an FSDP run from its weights (model_name_or_path: that folder)."
        )
