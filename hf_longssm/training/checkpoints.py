"""What a checkpoint of a state-passing run holds, when it counts as complete, and what a resume may change.

A checkpoint folder (`checkpoint-<step>`) holds transformers' files (weights, optimizer, scheduler, RNG,
`trainer_state.json`), one carried-state file per process (`hf_longssm_state_rank<r>.pt`: the intervention's carried
state, fitted statistics and noise generator) and, written last, `hf_longssm_checkpoint.json`, the completeness
marker with the run settings the data layout depends on. A run killed at any moment leaves either a complete
checkpoint or a folder without the marker, which resuming skips with a warning (torchtune's checkpoint rules, in
small: each saved setting is compared with the requested one, and a difference that would break exactness stops the
run naming both values).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..files import load_torch_file


logger = logging.get_logger(__name__)

STATE_FILE = "hf_longssm_state_rank{rank}.pt"
COMPLETE_FILE = "hf_longssm_checkpoint.json"
TRAINER_STATE_FILE = "trainer_state.json"
# Settings that decide which tokens a step reads or which state it starts from: a resume with another value would not
# continue the run exactly. (Checkpoints of 0.1 hold the first four; only the settings a checkpoint holds count.)
RUN_SETTINGS = (
    "state_init", "segment_length", "per_device_train_batch_size", "world_size", "gradient_accumulation_steps",
    "dataloader_num_workers", "seed", "data_seed", "reset_state_on_eos", "noise_std", "fitted_noise_warmup_steps",
    "fitted_noise_update", "state_dtype", "train_sampling_strategy", "attention_state", "attention_window",
)  # fmt: skip
# transformers' files a resume needs besides the weights (and `scheduler.pt`, `rng_state*.pth`): without them it would
# go on with a fresh optimizer. The optimizer's state is `optimizer.pt` (one process or DDP), `optimizer.bin` or the
# folder `optimizer_0` (FSDP's full or sharded state dict) or a `global_step<N>` folder (DeepSpeed).
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin", "optimizer_0", "global_step*")
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def run_settings(args) -> dict:
    """The `RUN_SETTINGS` of a `StatePassingConfig`."""
    return {name: getattr(args, name) for name in RUN_SETTINGS}


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary name, then rename: a kill mid-write never leaves a truncated file under `path`."""
    # A name of this writer's own (pid and a random part): two writers never rename each other's temporary file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_state_file(checkpoint: str | os.PathLike, rank: int, payload: dict) -> None:
    _atomic_write(Path(checkpoint) / STATE_FILE.format(rank=rank), lambda tmp: torch.save(payload, tmp))


def unmark(checkpoint: str | os.PathLike) -> None:
    """Remove the marker before a folder is (re)written, so a kill during the rewrite leaves it incomplete."""
    (Path(checkpoint) / COMPLETE_FILE).unlink(missing_ok=True)


def mark_complete(checkpoint: str | os.PathLike, settings: dict, global_step: int) -> None:
    """Write the completeness marker: called once every process's files and transformers' files are written."""
    info = {"global_step": global_step, **settings}
    _atomic_write(Path(checkpoint) / COMPLETE_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))


def read_marker(checkpoint: str | os.PathLike) -> dict | None:
    path = Path(checkpoint) / COMPLETE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupted ({err}); delete {checkpoint} to resume from an earlier one.") from err


def missing_files(checkpoint: str | os.PathLike) -> list[str]:
    """What `checkpoint` lacks to be resumed exactly (empty when it is complete): the marker, written last, then
    `trainer_state.json` and every process's state file."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        return [str(folder)]
    marker = read_marker(folder)
    if marker is None:
        return [COMPLETE_FILE]
    needed = [TRAINER_STATE_FILE] + [STATE_FILE.format(rank=r) for r in range(marker["world_size"])]
    return [name for name in needed if not (folder / name).is_file()]


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-<step>` folders of `output_dir`, newest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint of `output_dir`; newer incomplete ones are skipped with a warning naming them."""
    for checkpoint in list_checkpoints(output_dir):
        missing = missing_files(checkpoint)
        if not missing:
            return str(checkpoint)
        logger.warning(
            f"Skipping the incomplete checkpoint {checkpoint} (missing {missing}: the run was interrupted while "
            "saving it); resuming from an earlier complete one."
        )
    return None


def rotate_checkpoints(output_dir: str | os.PathLike, save_total_limit: int | None, keep: str | None = None) -> None:
    """Delete the oldest complete checkpoints beyond `save_total_limit`. Only complete checkpoints count and are
    deleted, so the newest complete one survives until its successor is complete; `keep` (the best one) stays."""
    if not save_total_limit or save_total_limit < 1:
        return
    complete = [p for p in list_checkpoints(output_dir) if not missing_files(p)]
    for old in complete[save_total_limit:]:
        if keep is not None and Path(keep).resolve() == old.resolve():
            continue
        logger.info(f"Deleting older checkpoint {old} (save_total_limit={save_total_limit}).")
        shutil.rmtree(old, ignore_errors=True)


def load_state_file(checkpoint: str | os.PathLike, rank: int) -> dict:
    """The carried-state payload of process `rank`, or a clear error naming the file."""
    path = Path(checkpoint) / STATE_FILE.format(rank=rank)
    if not path.is_file():
        raise ValueError(
            f"{path} not found: {checkpoint} holds no carried state for process {rank}. Resume with the number of "
            "processes it was saved with, or from another checkpoint."
        )
    # The payload is tensors, numbers, strings and the noise generator's state (a uint8 tensor): `load_torch_file`
    # reads it with `weights_only=True`, so a checkpoint from elsewhere can never run code here.
    return load_torch_file(
        path,
        f"Resume from a checkpoint you or a source you trust wrote, or delete {checkpoint} to resume from an "
        "earlier complete checkpoint.",
    )


def load_renamed_weights(model: torch.nn.Module, checkpoint: str | os.PathLike) -> bool:
    """Load a checkpoint's weights saved under other names than the model's own (transformers 5 converts some models'
    weights at `save_pretrained`, e.g. Granite 4.0-H's experts, and converts them back in `from_pretrained`). The
    Trainer's resume reads the file as is, leaves those weights unloaded with a warning and goes on with the ones in
    memory; this loads them through `from_pretrained`. Returns False (nothing done) when the names match."""
    path = Path(checkpoint) / "model.safetensors"
    if not isinstance(model, PreTrainedModel) or not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as f:
        saved = set(f.keys())
    if saved == set(model.state_dict()):
        return False
    dtype = next(model.parameters()).dtype
    loaded = type(model).from_pretrained(checkpoint, dtype=dtype, config=model.config)
    model.load_state_dict(loaded.state_dict())
    return True


def at_max_steps(checkpoint: str | os.PathLike, max_steps: int) -> bool:
    """Whether `checkpoint` was saved at `max_steps` (the run was killed between its last save and its end)."""
    saved = json.loads((Path(checkpoint) / TRAINER_STATE_FILE).read_text())
    return max_steps > 0 and saved["global_step"] >= max_steps


def check_resume_settings(checkpoint: str | os.PathLike, saved: dict, requested: dict) -> None:
    """Refuse a resume that would not continue the saved run exactly, naming the saved and the requested values, or
    the file it lacks."""
    folder = Path(checkpoint)
    lacking = [] if any(any(folder.glob(pattern)) for pattern in OPTIMIZER_FILES) else ["optimizer.pt"]
    if not (folder / "scheduler.pt").is_file():
        lacking.append("scheduler.pt")
    if not any(folder.glob("rng_state*.pth")):  # `rng_state.pth`, or one per process
        lacking.append("rng_state.pth")
    if lacking:
        raise ValueError(
            f"Cannot resume {checkpoint} exactly: it has no {', '.join(lacking)} (saved with save_only_model, or "
            "copied without them), so training would go on with a fresh optimizer, schedule or random state. Resume "
            "from a checkpoint that has them, or start a new run from its weights (model_name_or_path: that folder)."
        )
    changed = {k: (saved[k], requested[k]) for k in RUN_SETTINGS if k in saved and saved[k] != requested[k]}
    if changed:
        listed = ", ".join(f"{k}: saved {a!r}, requested {b!r}" for k, (a, b) in changed.items())
        raise ValueError(
            f"Cannot resume {checkpoint} exactly: {listed}. The streams, their rows and the carried states depend on "
            "these settings. Resume with the saved values, or start a new run (another output_dir, or "
            "overwrite_output_dir: true)."
        )


# Written by `hf-longssm train` once a run has finished: a second launch of the same run does nothing.
FINISHED_FILE = "train_results.json"
FINISHED = "finished"
_WEIGHT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def resume_point(args, model_name_or_path: str | None = None) -> str | None:
    """Where a launch of the run in `args.output_dir` starts: a checkpoint path, `None` (from scratch) or `FINISHED`.

    * `resume_from_checkpoint` given: that checkpoint (the trainer refuses a missing or incomplete one);
    * `overwrite_output_dir`: from scratch; earlier checkpoints of `output_dir` are deleted (they would otherwise be
      resumed by a later launch), and so is the finished marker of an earlier run;
    * a finished run (`train_results.json`): `FINISHED`, nothing is trained or rewritten;
    * otherwise the newest complete checkpoint, or from scratch in an empty (or checkpoint-free) folder.

    Refused unless `overwrite_output_dir`: an `output_dir` that is the model being trained from, or that holds a
    saved model but no checkpoint (another run's result).
    """
    output_dir = Path(args.output_dir)
    if args.resume_from_checkpoint:
        return args.resume_from_checkpoint
    if args.overwrite_output_dir:
        for old in list_checkpoints(output_dir) if args.process_index == 0 else []:
            logger.warning(f"overwrite_output_dir: deleting {old} from an earlier run.")
            shutil.rmtree(old, ignore_errors=True)
        if args.process_index == 0:  # the folder no longer holds a finished run (`hf-longssm push` refuses it)
            (output_dir / FINISHED_FILE).unlink(missing_ok=True)
        return None
    if model_name_or_path and Path(model_name_or_path).resolve() == output_dir.resolve():
        raise ValueError(
            f"output_dir {output_dir} is the model being trained from: training would overwrite it. Choose another "
            "output_dir, or set overwrite_output_dir: true."
        )
    if (output_dir / FINISHED_FILE).is_file():
        return FINISHED
    last = last_complete_checkpoint(output_dir)
    if last is not None:
        return last
    found = [name for name in _WEIGHT_FILES if (output_dir / name).is_file()]
    if found:
        raise ValueError(
            f"output_dir {output_dir} already holds a saved model ({', '.join(found)}) and no checkpoint to resume: "
            "it is another run's result. Choose another output_dir, or set overwrite_output_dir: true."
        )
    return None
