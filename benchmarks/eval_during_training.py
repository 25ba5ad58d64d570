"""Evaluation while post-training: `StatePassingTrainer.evaluate()` vs `evaluation.position_perplexity` on the same
documents, seconds per 1k evaluated tokens (medians of interleaved repeats, one process).

    python benchmarks/eval_during_training.py [--size 10m] [--documents 4] [--eval_max_length 8192]

The trainer adds the dataset handling, the cross-process reduction and the logging around the same scoring loop:
the ratio says what that costs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from datasets import Dataset


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, interleaved_medians, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="10m")
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--eval_max_length", type=int, default=8192)
    parser.add_argument("--segment_length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="default: benchmarks/results/eval_during_training_cpu_<size>.json")
    args = parser.parse_args()

    import hf_longssm as hl
    from hf_longssm import evaluation

    torch.set_num_threads(2)
    model = build_model("mamba2", args.size).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.vocab_size, (args.documents, args.eval_max_length), generator=g)
    with tempfile.TemporaryDirectory() as out:
        config = hl.StatePassingConfig(
            output_dir=out, segment_length=args.segment_length, eval_max_length=args.eval_max_length,
            per_device_eval_batch_size=args.documents, use_cpu=True, report_to=[], eval_plots=False,
            disable_tqdm=True,
        )  # fmt: skip
        trainer = hl.StatePassingTrainer(
            model=model, args=config, eval_dataset=Dataset.from_dict({"input_ids": ids.tolist()})
        )
        medians = interleaved_medians(
            {
                "trainer_evaluate": lambda: trainer.evaluate(),
                "position_perplexity": lambda: evaluation.position_perplexity(
                    model, ids, segment_length=args.segment_length
                ),
            },
            repeats=args.repeats,
        )
    tokens_k = ids.numel() / 1000
    per_1k = {name: m["median_s"] / tokens_k for name, m in medians.items()}
    results = {
        "model": f"mamba2 {args.size}",
        "documents": args.documents,
        "eval_max_length": args.eval_max_length,
        "segment_length": args.segment_length,
        "seconds_per_1k_tokens": per_1k,
        "ratio_trainer_over_position_perplexity": per_1k["trainer_evaluate"] / per_1k["position_perplexity"],
        "medians": medians,
    }
    output = args.output or Path(__file__).parent / "results" / f"eval_during_training_cpu_{args.size}.json"
    path = write_results(output, results)
    print(results["seconds_per_1k_tokens"], results["ratio_trainer_over_position_perplexity"], path)


if __name__ == "__main__":
    main()
