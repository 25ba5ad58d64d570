"""forward_with_state vs the plain transformers forward, same model and tokens, CPU or GPU.

    python benchmarks/forward_backward.py [--sizes tiny 10m] [--lengths 512 2048 8192] [--repeats 3]
    python benchmarks/forward_backward.py --model_types qwen3_5_text lfm2 --sizes 10m --lengths 512 2048 \
        --output benchmarks/results/forward_backward_cpu_gated_deltanet_lfm2.json

Times: both paths in one subprocess per (model type, size, length), run in turn after a warm-up (median of
`--repeats`), so that load on the machine hits both alike; speedup = transformers / hf_longssm (> 1: ours is faster).
Memory: one subprocess per path, each mode once, peak RSS above the loaded model.
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


def measure(model_type: str, size: str, length: int, paths: list[str], repeats: int, max_seconds: float) -> dict:
    """One subprocess. With both paths: times, interleaved run by run so that load on the machine hits both alike.
    With one path: that path's peak memory (max RSS above the loaded model), each mode once."""
    import hf_longssm as hl

    model = build_model(model_type, size)
    ids = torch.randint(0, model.config.vocab_size, (1, length))
    skip_plain_backward = model_type in ("mamba", "falcon_mamba") and length > PLAIN_MAMBA1_BACKWARD_MAX_LENGTH

    def forward(path):
        with torch.no_grad():
            if path == "hf_longssm":
                hl.forward_with_state(model, ids)
            else:
                model(ids)

    def forward_backward(path):
        model.zero_grad(set_to_none=True)
        if path == "hf_longssm":
            out, _ = hl.forward_with_state(model, ids, labels=ids)
        else:
            out = model(ids, labels=ids)
        out.loss.backward()

    out = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if len(paths) == 1:  # memory
        path = paths[0]
        base = peak_rss_mib()
        forward(path)
        out["peak_rss_mib_forward"] = peak_rss_mib() - base
        if not (path == "transformers" and skip_plain_backward):
            forward_backward(path)
            out["peak_rss_mib_forward_backward"] = peak_rss_mib() - base
        return out
    fwd = {p: (lambda p=p: forward(p)) for p in paths}
    out["forward"] = interleaved_medians(fwd, repeats, max_seconds)
    fb = {p: (lambda p=p: forward_backward(p)) for p in paths if not (p == "transformers" and skip_plain_backward)}
    out["forward_backward"] = interleaved_medians(fb, repeats, max_seconds)
    if skip_plain_backward:
        out["forward_backward"]["transformers"] = {
            "skipped": f"quadratic in length; not run above {PLAIN_MAMBA1_BACKWARD_MAX_LENGTH}"
        }
    return out


def run_one(args, model_type, size, length, paths):
    cmd = [
        sys.executable,
        __file__,
        "--_one",
        model_type,
        size,
        str(length),
        ",".join(paths),
        "--repeats",
        str(args.repeats),
        "--max_seconds",
        str(args.max_seconds),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"timeout_s": args.timeout}


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
        model_type, size, length, paths = args._one
        print(json.dumps(measure(model_type, size, int(length), paths.split(","), args.repeats, args.max_seconds)))
        return

    rows = []
    for size in args.sizes:
        for model_type in args.model_types:
            for length in args.lengths:
                row = {"model_type": model_type, "size": size, "length": length}
                row["time"] = run_one(args, model_type, size, length, ["hf_longssm", "transformers"])
                row["memory"] = {
                    p: run_one(args, model_type, size, length, [p]) for p in ("hf_longssm", "transformers")
                }
                for mode in ("forward", "forward_backward"):
                    timing = row["time"].get(mode, {})
                    if "median_s" in timing.get("hf_longssm", {}) and "median_s" in timing.get("transformers", {}):
                        row[f"speedup_{mode}"] = timing["transformers"]["median_s"] / timing["hf_longssm"]["median_s"]
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
