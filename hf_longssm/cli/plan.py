"""Per-GPU memory of a post-training run under DDP, ZeRO-2, FSDP2 and ZeRO-3, from the model's config alone.

    hf-longssm plan --model state-spaces/mamba2-2.7b --segment_length 2048 --batch 8 --gpus 16 \
        [--activation_checkpointing] [--json]

`--model` is a Hub id, a folder (transformers or mamba_ssm format) or a `config.json`; no weights are read. Weights,
gradients and AdamW's moments are float32 (transformers' `bf16=True`); activations are counted by running one
training forward with fake tensors (no memory) at the run's shape on the torch path; the carried state is exact. See
`hf_longssm.training.memory_plan` for what is and is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..loading import load_config
from ..training.memory_plan import plan_memory


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-longssm plan", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hub id, folder or config.json (no weights are read)")
    p.add_argument("--segment_length", type=int, default=2048, help="tokens per training segment")
    p.add_argument("--batch", type=int, default=8, help="per_device_train_batch_size")
    p.add_argument("--gpus", type=int, default=8, help="processes over all machines (what sharding divides by)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16", help="compute dtype")
    p.add_argument("--state_dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--activation_checkpointing", action="store_true", help="blocks recomputed in the backward")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (bytes) instead of a table")
    return p


def main(argv: list[str] | None = None) -> None:
    """`hf-longssm plan --model M [...]`: print the memory table (GiB per GPU) or, with `--json`, the bytes."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    config = load_config(args.model)
    try:
        plan = plan_memory(
            config,
            segment_length=args.segment_length,
            per_device_batch=args.batch,
            num_processes=args.gpus,
            compute_dtype=args.dtype,
            state_dtype=args.state_dtype,
            activation_checkpointing=args.activation_checkpointing,
        )
    except RuntimeError as err:  # a config whose shapes do not fit together fails inside the forward
        raise ValueError(f"{args.model}: the model's shapes do not fit together ({err}). Check its config.") from err
    if args.json:
        print(json.dumps({"num_parameters": plan.num_parameters, "bytes": plan.bytes}, indent=2))
        return
    checkpointing = "with" if args.activation_checkpointing else "without"
    print(
        f"{args.model}: {plan.num_parameters / 1e9:.2f}B parameters; {args.batch} x {args.segment_length} tokens per "
        f"GPU, {args.gpus} GPUs, {args.dtype} compute, {checkpointing} activation checkpointing, AdamW.\n"
    )
    print(plan.table())
