"""Tokens/s and peak memory of `evaluation.position_perplexity` vs one plain transformers forward on the same tokens.

    python benchmarks/position_perplexity.py [--model_type mamba2] [--size 10m] [--lengths 8192 32768 65536]

Each (path, length) runs in its own subprocess (peak RSS is its own). The plain path is one forward over the whole
sequence plus log-softmax: its memory grows with the length; position_perplexity reads segments with the state
carried, so its memory does not. Medians of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, interleaved_medians, peak_rss_mib, write_results  # noqa: E402


def measure(model_type, size, length, path, segment_length, repeats):
    from hf_longssm import evaluation

    model = build_model(model_type, size).eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)

    def ours():
        evaluation.position_perplexity(model, ids, segment_length=segment_length)

    def plain():
        with torch.no_grad():
            logits = model(ids).logits
            torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])

    base = peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timing = interleaved_medians({path: ours if path == "hf_longssm" else plain}, repeats)[path]
    result = {"time": timing, "tokens_per_s": length / timing["median_s"], "peak_rss_mib": peak_rss_mib() - base}
    if device == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_type", default="mamba2")
    parser.add_argument("--size", default="10m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536])
    parser.add_argument("--segment_length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/position_perplexity_cpu.json")
    parser.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        length, path = args._one
        out = measure(args.model_type, args.size, int(length), path, args.segment_length, args.repeats)
        print(json.dumps(out))
        return
    rows = []
    for length in args.lengths:
        row = {"length": length}
        for path in ("hf_longssm", "transformers"):
            cmd = [
                sys.executable,
                __file__,
                "--_one",
                str(length),
                path,
                "--model_type",
                args.model_type,
                "--size",
                args.size,
                "--segment_length",
                str(args.segment_length),
                "--repeats",
                str(args.repeats),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            row[path] = (
                json.loads(out.stdout.strip().splitlines()[-1])
                if out.returncode == 0
                else {"error": out.stderr.strip()[-300:]}
            )
        if "tokens_per_s" in row["transformers"]:
            row["throughput_ratio"] = row["hf_longssm"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
            row["memory_ratio"] = row["hf_longssm"]["peak_rss_mib"] / max(row["transformers"]["peak_rss_mib"], 1e-9)
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_results(
        args.output,
        {"model_type": args.model_type, "size": args.size, "segment_length": args.segment_length, "rows": rows},
    )


if __name__ == "__main__":
    main()
