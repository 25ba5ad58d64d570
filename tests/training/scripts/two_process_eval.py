"""Run under `accelerate launch` (2 CPU processes): `trainer.evaluate()` with the documents shared across ranks."""

import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset


sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import hf_longssm as hl  # noqa: E402
from tests.utils import tiny_model  # noqa: E402


def main(output_dir: str) -> None:
    g = torch.Generator().manual_seed(1)
    eval_docs = Dataset.from_dict({"input_ids": torch.randint(1, 64, (5, 80), generator=g).tolist()})
    args = hl.StatePassingConfig(
        output_dir=output_dir, segment_length=8, eval_max_length=64, per_device_eval_batch_size=2, use_cpu=True,
        report_to=[], eval_plots=False, disable_tqdm=True,
    )  # fmt: skip
    trainer = hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args, eval_dataset=eval_docs)
    metrics = trainer.evaluate()
    rank = trainer.args.process_index
    out = {"world_size": trainer.args.world_size, "metrics": metrics, "rows": trainer._eval_input_ids.tolist()}
    Path(output_dir, f"eval_rank{rank}.json").write_text(json.dumps(out))
    # Both ranks have written their records: meet once, then leave without tearing gloo down. Left to interpreter
    # shutdown it can abort ("terminate called ..."), and destroy_process_group after a barrier can hang a rank whose
    # peer is already gone (seen under load).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
