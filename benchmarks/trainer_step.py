"""Wall time per optimizer step: StatePassingTrainer (each state_init) vs a plain transformers.Trainer.

    python benchmarks/trainer_step.py [--model_type mamba2] [--size 10m] [--segment_length 512] [--steps 20]

Same model initialisation, same tokens (the same segments in the same order: sequential sampling for both), same
optimizer; the plain Trainer runs the model's own forward from a zero state. Median step time after 3 warm-up
steps; ratio = ours / plain (target: <= 1.03 for every state init, benchmarks/run_all.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, write_results  # noqa: E402

import hf_longssm as hl  # noqa: E402
from hf_longssm.training.data import SegmentDataset  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


class PlainSegments(torch.utils.data.Dataset):
    """The same segments for transformers' Trainer: labels = input_ids (the model shifts them)."""

    def __init__(self, segments: SegmentDataset):
        self.segments = segments

    def __len__(self):
        return len(self.segments)

    def __getitem__(self, i):
        item = self.segments[i]
        return {"input_ids": item["input_ids"], "labels": item["input_ids"]}


def common_args(output_dir, steps, batch):
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=0,
        dataloader_drop_last=True,
    )


def run(kind, model_type, size, segments, steps, batch, tmp):
    model = build_model(model_type, size)
    timer = StepTimer()
    if kind == "plain":
        args = TrainingArguments(**common_args(tmp, steps, batch))
        trainer = Trainer(model=model, args=args, train_dataset=PlainSegments(segments), callbacks=[timer])
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    else:
        args = hl.StatePassingConfig(
            state_init=kind,
            segment_length=segments.segment_length,
            noise_std=0.1,
            fitted_noise_warmup_steps=2,
            **common_args(tmp, steps, batch),
        )
        trainer = hl.StatePassingTrainer(model=model, args=args, train_dataset=segments, callbacks=[timer])
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    trainer.train()
    return timer.times[3:]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_type", default="mamba2")
    parser.add_argument("--size", default="10m")
    parser.add_argument("--segment_length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every method")
    parser.add_argument("--output", default="benchmarks/results/trainer_step_cpu.json")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    vocab = build_model(args.model_type, args.size).config.vocab_size
    docs = [torch.randint(1, vocab, (4000,), generator=g).tolist() for _ in range(40)]
    segments = SegmentDataset(docs, args.segment_length, args.batch, eos_token_id=0)
    kinds = ["plain", "zero", "random_noise", "fitted_noise", "state_passing", "tbtt"]
    times = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for kind in kinds:
                times[kind] += run(kind, args.model_type, args.size, segments, args.steps, args.batch, tmp)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model_type": args.model_type,
        "size": args.size,
        "segment_length": args.segment_length,
        "batch": args.batch,
        "median_step_s": medians,
        "ratio_to_plain": {k: medians[k] / medians["plain"] for k in kinds if k != "plain"},
        "steps_measured": {k: len(v) for k, v in times.items()},
    }
    print(result["ratio_to_plain"])
    write_results(args.output, result)


if __name__ == "__main__":
    main()
