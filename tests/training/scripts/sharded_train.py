"""Run under a 2-process launcher (torchrun or `accelerate launch`, CPU, gloo): train a tiny model through
StatePassingTrainer and record, per rank, what each step saw and how the model was distributed.

Usage: sharded_train.py OUTPUT_DIR OPTIONS_JSON, OPTIONS_JSON holding `model_type`, `state_init`, `max_steps`,
`resume` (a checkpoint path or null), `evaluate` and `save` (booleans), `config` (StatePassingConfig fields over the
defaults: `fsdp`, `fsdp_config`, `bf16`...) and `model` (model config fields over tests.utils.tiny_config's).
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset


sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import hf_longssm as hl  # noqa: E402
from tests.utils import tiny_model  # noqa: E402


class RecordingTrainer(hl.StatePassingTrainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_times.append(time.perf_counter() - start)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        carried = getattr(self.intervention, "carried", None)
        if carried is not None:  # the state stays whole and local: a plain tensor, every head, on this rank
            self.state_kinds = sorted({type(t).__name__ for t in carried.conv_states + carried.recurrent_states})
            self.state_shapes = [list(t.shape) for t in carried.recurrent_states]
            self.state_dtypes = sorted({str(t.dtype) for t in carried.conv_states + carried.recurrent_states})
        self.records.append(
            {
                "step": self.state.global_step,
                "first_tokens": inputs["input_ids"][:, 0].tolist(),
                "loss": loss.item(),
                "state_norm": carried.norms().tolist() if carried is not None else None,
            }
        )
        return loss


def local_numel(param: torch.Tensor) -> int:
    """Elements of `param` this process holds: its FSDP2 shard (DTensor), its ZeRO-3 partition, or all of it."""
    if hasattr(param, "to_local"):
        return param.to_local().numel()
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor.numel()
    return param.numel()


def optimizer_bytes(optimizer) -> int:
    """Bytes of AdamW's moments this process holds (the step counters, scalars, left out)."""
    moments = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0]
    return sum(local_numel(t) * t.element_size() for t in moments)


def main(output_dir: str, options: dict):
    docs = [[1 + (d * 7 + i) % 60 for i in range(150 + 13 * d)] for d in range(12)]
    settings = dict(
        output_dir=output_dir,
        state_init=options["state_init"],
        segment_length=16,
        per_device_train_batch_size=2,
        max_steps=options["max_steps"],
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_drop_last=True,
        eval_strategy="steps" if options.get("evaluate") else "no",
        eval_steps=2,
        eval_max_length=40,
        per_device_eval_batch_size=2,
    )
    args = hl.StatePassingConfig(**{**settings, **options.get("config", {})})  # `config` overrides the defaults
    trainer = RecordingTrainer(
        model=tiny_model(options["model_type"], **options.get("model", {})),  # `model`: config overrides
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": docs}),
        eval_dataset=Dataset.from_dict({"input_ids": docs[:5]}) if options.get("evaluate") else None,
    )
    trainer.records, trainer.step_times, trainer.state_kinds, trainer.state_shapes = [], [], None, None
    trainer.state_dtypes = None
    trainer.train(resume_from_checkpoint=options.get("resume"))
    if options.get("save"):
        trainer.save_model(str(Path(output_dir, "final")))  # every process takes part (FSDP gathers the shards)

    from torch.distributed.fsdp import FSDPModule

    model = trainer.model
    params = list(model.parameters())
    mixed = getattr(getattr(model, "_get_fsdp_state", lambda: None)(), "_mp_policy", None)
    out = {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "records": trainer.records,
        "step_times": trainer.step_times,
        "fsdp_enabled": trainer.is_fsdp_enabled,
        "model_class": type(trainer.model_wrapped).__name__,
        "fsdp_module": isinstance(model, FSDPModule),
        "fsdp_blocks": sum(isinstance(m, FSDPModule) for m in model.modules()),
        "dtensor_params": sum(type(p).__name__ == "DTensor" for p in params),
        "num_params": len(params),
        "local_numel": sum(local_numel(p) for p in params),
        "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        "local_param_bytes": sum(local_numel(p) * p.element_size() for p in params),
        "local_optimizer_bytes": optimizer_bytes(trainer.optimizer),
        "param_dtype": str(getattr(mixed, "param_dtype", None)),
        "state_kinds": trainer.state_kinds,
        "state_shapes": trainer.state_shapes,
        "state_dtypes": trainer.state_dtypes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval": [log for log in trainer.state.log_history if "eval_loss" in log],
    }
    kind = "resumed" if options.get("resume") else "fresh"
    Path(output_dir, f"records_rank{out['rank']}_{kind}.json").write_text(json.dumps(out))
    # Both ranks have written their records: meet once, then leave without tearing gloo down (see two_process_train).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
