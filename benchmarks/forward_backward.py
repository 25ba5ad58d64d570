"""forward_with_state vs the plain transformers forward, same model and tokens, CPU or GPU.

    python benchmarks/forward_backward.py [--sizes tiny 10m] [--lengths 512 2048 8192] [--repeats 3]
    python benchmarks/forward_backward.py --model_types qwen3_5_text lfm2 --sizes 10m --lengths 512 2048 \
        --output benchmarks/results/forward_backward_cpu_gated_deltanet_lfm2.json

Times: both paths in this process, per (model type, size, length) run in turn after a warm-up (median of
`--repeats`), so that load on the machine hits both alike; speedup = transformers / hf_longssm (> 1: ours is faster).
Forward+backward is timed only where both paths run it (transformers' Mamba-1 loop is quadratic, see below).
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
from common import build_model, interleaved_medians, peak_rss_mib, reset_peak_rss_mib, write_results  # noqa: E402


PATHS = ("hf_longssm", "transformers")
# transformers' Mamba-1 / FalconMamba torch fallback slices one time step per iteration; the backward of each slice
# writes a full-size gradient, so its forward+backward grows quadratically with the length (8 s at tiny 2048, minutes
# at 10m 2048). Past this length neither path's forward+backward is run; the forward is still measured.
PLAIN_MAMBA1_BACKWARD_MAX_LENGTH = 2048


def plain_backward_runs(model_type: str, length: int, max_length: int) -> bool:
    return model_type not in ("mamba", "falcon_mamba") or length <= max_length


def measure(
    model_type: str, size: str, length: int, paths: list[str], repeats: int, max_seconds: float, backward: bool
) -> dict:
    """With both paths: times, interleaved run by run so that load on the machine hits both alike. With one path (in
    a subprocess of its own): that path's peak memory (max RSS above the loaded model), each mode once."""
    if "hf_longssm" in paths:  # a memory process of transformers' path alone skips the import (a second of start)
        import hf_longssm as hl

    model = build_model(model_type, size)
    ids = torch.randint(0, model.config.vocab_size, (1, length))

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
        base = reset_peak_rss_mib()
        forward(path)
        out["peak_rss_mib_forward"] = peak_rss_mib() - base
        if backward:
            forward_backward(path)
            out["peak_rss_mib_forward_backward"] = peak_rss_mib() - base
        return out
    out["forward"] = interleaved_medians({p: (lambda p=p: forward(p)) for p in paths}, repeats, max_seconds)
    if backward:
        fb = {p: (lambda p=p: forward_backward(p)) for p in paths}
        out["forward_backward"] = interleaved_medians(fb, repeats, max_seconds)
    return out


def memory_subprocess(args, model_type: str, size: str, length: int, path: str, backward: bool) -> dict:
    cmd = [sys.executable, __file__, "--_memory", model_type, size, str(length), path, str(int(backward))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"timeout_s": args.timeout}
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_types", nargs="+", default=["mamba", "falcon_mamba", "mamba2"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "10m"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_seconds", type=float, default=60.0, help="do not repeat a run slower than this")
    parser.add_argument(
        "--plain_mamba1_backward_max_length",
        type=int,
        default=PLAIN_MAMBA1_BACKWARD_MAX_LENGTH,
        help="longest length at which Mamba-1 / FalconMamba forward+backward runs (transformers' loop is quadratic)",
    )
    parser.add_argument("--no_memory", action="store_true", help="skip the per-path memory subprocesses")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on one memory subprocess after this")
    parser.add_argument("--output", default="benchmarks/results/forward_backward_cpu.json")
    parser.add_argument("--_memory", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory:
        model_type, size, length, path, backward = args._memory
        print(json.dumps(measure(model_type, size, int(length), [path], 0, 0.0, backward == "1")))
        return

    rows = []
    for size in args.sizes:
        for model_type in args.model_types:
            for length in args.lengths:
                backward = plain_backward_runs(model_type, length, args.plain_mamba1_backward_max_length)
                row = {"model_type": model_type, "size": size, "length": length}
                row["time"] = measure(model_type, size, length, list(PATHS), args.repeats, args.max_seconds, backward)
                if not backward:
                    skipped = f"quadratic in length; not run above {args.plain_mamba1_backward_max_length}"
                    row["time"]["forward_backward"] = {p: {"skipped": skipped} for p in PATHS}
                row["memory"] = {}
                if not args.no_memory:
                    row["memory"] = {p: memory_subprocess(args, model_type, size, length, p, backward) for p in PATHS}
                for mode in ("forward", "forward_backward"):
                    timing = row["time"].get(mode, {})
                    if all("median_s" in timing.get(p, {}) for p in PATHS):
                        row[f"speedup_{mode}"] = timing["transformers"]["median_s"] / timing["hf_longssm"]["median_s"]
                rows.append(row)
                keys = ("model_type", "size", "length", "speedup_forward", "speedup_forward_backward")
                print(json.dumps({k: row.get(k) for k in keys}), flush=True)
                write_results(args.output, {"rows": rows})


if __name__ == "__main__":
    main()
