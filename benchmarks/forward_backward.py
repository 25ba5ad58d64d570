"""forward_with_state vs the plain transformers forward, same model and tokens, CPU or GPU.

    python benchmarks/forward_backward.py [--sizes tiny 10m] [--lengths 512 2048 8192] [--repeats 3]

Each (model type, size, length) runs in its own subprocess so that its peak memory (max RSS) is its own. Times are
medians of interleaved repeats; ratios are plain / ours for time (> 1: ours is faster).
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


# transformers' Mamba-1 / FalconMamba torch fallback slices one time step per iteration; the backward of each slice
# writes a full-size gradient, so its forward+backward grows quadratically with the length. Past this length it is
# not run (minutes to hours); the forward is still measured.
PLAIN_MAMBA1_BACKWARD_MAX_LENGTH = 2048


def measure(model_type: str, size: str, length: int, path: str, repeats: int, max_seconds: float) -> dict:
    """One subprocess: forward and forward+backward times of one path, and its peak memory."""
    import hf_longssm as hl

    model = build_model(model_type, size)
    ids = torch.randint(0, model.config.vocab_size, (1, length))

    def forward():
        with torch.no_grad():
            if path == "hf_longssm":
                hl.forward_with_state(model, ids)
            else:
                model(ids)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        if path == "hf_longssm":
            out, _ = hl.forward_with_state(model, ids, labels=ids)
        else:
            out = model(ids, labels=ids)
        out.loss.backward()

    base = peak_rss_mib()
    fwd = interleaved_medians({"forward": forward}, repeats, max_seconds)["forward"]
    fwd_peak = peak_rss_mib() - base
    if path == "transformers" and model_type != "mamba2" and length > PLAIN_MAMBA1_BACKWARD_MAX_LENGTH:
        fb = {"skipped": f"quadratic in length; not run above {PLAIN_MAMBA1_BACKWARD_MAX_LENGTH}"}
    else:
        fb = interleaved_medians({"forward_backward": forward_backward}, repeats, max_seconds)["forward_backward"]
    return {
        "forward": fwd,
        "forward_backward": fb,
        "peak_rss_mib_forward": fwd_peak,
        "peak_rss_mib_forward_backward": peak_rss_mib() - base,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_types", nargs="+", default=["mamba", "falcon_mamba", "mamba2"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "10m"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_seconds", type=float, default=60.0, help="do not repeat a run slower than this")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on one subprocess after this")
    parser.add_argument("--output", default="benchmarks/results/forward_backward_cpu.json")
    parser.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        model_type, size, length, path = args._one
        print(json.dumps(measure(model_type, size, int(length), path, args.repeats, args.max_seconds)))
        return

    rows = []
    for size in args.sizes:
        for model_type in args.model_types:
            for length in args.lengths:
                row = {"model_type": model_type, "size": size, "length": length}
                for path in ("hf_longssm", "transformers"):
                    cmd = [
                        sys.executable,
                        __file__,
                        "--_one",
                        model_type,
                        size,
                        str(length),
                        path,
                        "--repeats",
                        str(args.repeats),
                        "--max_seconds",
                        str(args.max_seconds),
                    ]
                    try:
                        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
                        row[path] = json.loads(out.stdout.strip().splitlines()[-1])
                    except subprocess.TimeoutExpired:
                        row[path] = {"timeout_s": args.timeout}
                ours, plain = row["hf_longssm"], row["transformers"]
                for mode in ("forward", "forward_backward"):
                    if "median_s" in ours.get(mode, {}) and "median_s" in plain.get(mode, {}):
                        row[f"speedup_{mode}"] = plain[mode]["median_s"] / ours[mode]["median_s"]
                rows.append(row)
                print(
                    json.dumps(
                        {
                            k: row.get(k)
                            for k in ("model_type", "size", "length", "speedup_forward", "speedup_forward_backward")
                        }
                    ),
                    flush=True,
                )
                write_results(args.output, {"rows": rows})


if __name__ == "__main__":
    main()
