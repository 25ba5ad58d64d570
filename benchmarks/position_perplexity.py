"""Tokens/s and peak memory of `evaluation.position_perplexity` vs one plain transformers forward on the same tokens.

    python benchmarks/position_perplexity.py [--model_type mamba2] [--size 10m] [--lengths 8192 32768 65536]

Times: both paths in this process, per length run in turn after a warm-up (median of `--repeats`), so that load on
the machine hits both alike; throughput ratio = ours / plain tokens per second (> 1: ours is faster). Memory: one
subprocess per (path, length), each run once, peak RSS above the loaded model (and peak CUDA memory on a GPU). The
plain path is one forward over the whole sequence plus log-softmax: its memory grows with the length;
position_perplexity reads segments with the state carried, so its memory does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, interleaved_medians, peak_rss_mib, reset_peak_rss_mib, write_results  # noqa: E402


PATHS = ("hf_longssm", "transformers")


def path_functions(model_type: str, size: str, length: int, segment_length: int) -> dict:
    """The two paths as functions of no argument, on one model and one sequence."""
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

    return {"hf_longssm": ours, "transformers": plain}


def measure_time(model_type: str, size: str, length: int, segment_length: int, repeats: int) -> dict:
    times = interleaved_medians(path_functions(model_type, size, length, segment_length), repeats)
    return {p: {"time": t, "tokens_per_s": length / t["median_s"]} for p, t in times.items()}


def measure_memory(model_type: str, size: str, length: int, path: str, segment_length: int) -> dict:
    """One subprocess, one path: peak RSS above the loaded model (and peak CUDA memory) of one run."""
    fn = path_functions(model_type, size, length, segment_length)[path]
    base = reset_peak_rss_mib()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    fn()
    result = {"peak_rss_mib": peak_rss_mib() - base}
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_type", default="mamba2")
    parser.add_argument("--size", default="10m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536])
    parser.add_argument("--segment_length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_memory", action="store_true", help="skip the per-path memory subprocesses")
    parser.add_argument("--output", default="benchmarks/results/position_perplexity_cpu.json")
    parser.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory:
        length, path = args._memory
        print(json.dumps(measure_memory(args.model_type, args.size, int(length), path, args.segment_length)))
        return
    rows = []
    for length in args.lengths:
        row = {"length": length, **measure_time(args.model_type, args.size, length, args.segment_length, args.repeats)}
        for path in PATHS if not args.no_memory else ():
            cmd = [sys.executable, __file__, "--_memory", str(length), path, "--model_type", args.model_type,
                   "--size", args.size, "--segment_length", str(args.segment_length)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True)
            memory = (
                json.loads(out.stdout.strip().splitlines()[-1])
                if out.returncode == 0
                else {"error": out.stderr.strip()[-300:]}
            )
            row[path].update(memory)
        row["throughput_ratio"] = row["hf_longssm"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
        if "peak_rss_mib" in row["hf_longssm"] and "peak_rss_mib" in row["transformers"]:
            row["memory_ratio"] = row["hf_longssm"]["peak_rss_mib"] / max(row["transformers"]["peak_rss_mib"], 1e-9)
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("length", "throughput_ratio", "memory_ratio")}), flush=True)
    write_results(
        args.output,
        {"model_type": args.model_type, "size": args.size, "segment_length": args.segment_length, "rows": rows},
    )


if __name__ == "__main__":
    main()
