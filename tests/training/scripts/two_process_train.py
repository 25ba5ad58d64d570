"""Run under `accelerate launch --num_processes 2 --cpu`: TBTT training, each rank records what it saw."""

import json
import os
import sys
from pathlib import Path

import torch
from datasets import Dataset


sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import hf_longssm as hl  # noqa: E402
from tests.utils import tiny_model  # noqa: E402


class RecordingTrainer(hl.StatePassingTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.records.append(
            {
                "step": self.state.global_step,
                "first_tokens": inputs["input_ids"][:, 0].tolist(),
                "last_labels": inputs["shift_labels"][:, -1].tolist(),
                "loss": loss.item(),
                "state_norm": self.intervention.carried.norms().tolist(),
            }
        )
        return loss


def main(output_dir: str, max_steps: int, resume: str | None):
    docs = [[1 + (d * 7 + i) % 60 for i in range(150 + 13 * d)] for d in range(12)]
    args = hl.StatePassingConfig(
        output_dir=output_dir,
        state_init="tbtt",
        segment_length=16,
        per_device_train_batch_size=2,
        max_steps=max_steps,
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
    )
    trainer = RecordingTrainer(
        model=tiny_model("mamba2"), args=args, train_dataset=Dataset.from_dict({"input_ids": docs})
    )
    trainer.records = []
    trainer.train(resume_from_checkpoint=resume)
    rank = trainer.args.process_index
    streams = trainer.train_dataset.streams.tolist()
    out = {"rank": rank, "world_size": trainer.args.world_size, "records": trainer.records, "streams": streams}
    Path(output_dir, f"records_rank{rank}_{'resumed' if resume else 'fresh'}.json").write_text(json.dumps(out))
    # Both ranks have written their records: meet once, then leave without tearing gloo down. Left to interpreter
    # shutdown it can abort ("terminate called ..."), and destroy_process_group after a barrier can hang a rank whose
    # peer is already gone (seen under load).
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
