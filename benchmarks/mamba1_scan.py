"""The Mamba-1 selective scan alone: hf_longssm's torch scan vs mambapy's parallel scan vs transformers' loop.

    pip install mambapy==1.2.0 --no-deps    # for this benchmark only; without it the mambapy column is skipped
    python benchmarks/mamba1_scan.py [--shapes small small-dt medium 130m-b1 130m-b4] [--repeats 5] [--threads 2]
    python benchmarks/mamba1_scan.py --table benchmarks/results/mamba1_scan_cpu.json   # the markdown table again

Every path computes the full selective scan from the same inputs: dt = softplus(delta + delta_bias), the scan over
exp(dt A) and dt B u, y = C . h + D u gated by silu(z), and the final state; forward+backward differentiates a fixed
random projection of y and the final state with respect to every input.

* `hf_longssm`: `hf_longssm.modeling.selective_scan` (the CPU path of Mamba-1 / FalconMamba without mamba-ssm).
* `mambapy`: mambapy 1.2.0's `mambapy.pscan.pscan` (Blelloch scan with a hand-written backward), called as
  transformers does with `use_mambapy=True`.
* `transformers`: transformers' torch fallback `mamba_selective_scan` (a Python loop over time with autograd). Its
  backward writes a full-size gradient per time step (quadratic in the length: 40-90 s at the smallest shape), so it
  runs only for `--transformers_backward_shapes`, once, after the interleaved rounds of the others.

Times: one subprocess per shape; all paths run in turn after a warm-up (median of `--repeats` interleaved rounds), so
that load on the machine hits them alike; ratio = other time / hf_longssm time (> 1: hf_longssm is faster). Memory:
one subprocess per (shape, path, mode), peak RSS above the inputs after a warm-up at a small size. Exactness: the
largest difference of y, the final state and every gradient to hf_longssm's, relative to that tensor's largest value.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, peak_rss_mib, reset_peak_rss_mib, timed, write_results  # noqa: E402
from make_table import mamba1_scan_table  # noqa: E402


# (batch, channels d, state size n, length l, step regime). "small dt" is dt ~ 0.02, the low end of Mamba's
# initialisation (dt in [0.001, 0.1]); the others draw dt = softplus(N(0, 0.25^2)) ~ 0.7, a trained model's range.
SHAPES = {
    "tiny": (1, 32, 4, 256, "softplus(N(0, 0.25))"),  # the smoke test's (run_all.py --mode smoke): seconds
    "small": (1, 128, 16, 2048, "softplus(N(0, 0.25))"),
    "small-dt": (1, 128, 16, 2048, "small (~0.02)"),
    "medium": (4, 256, 16, 2048, "softplus(N(0, 0.25))"),
    "130m-b1": (1, 1536, 16, 2048, "softplus(N(0, 0.25))"),  # mamba-130m: d_inner 1536, d_state 16
    "130m-b4": (4, 1536, 16, 2048, "softplus(N(0, 0.25))"),
}
PATHS = ("hf_longssm", "mambapy", "transformers")
ARGUMENTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# softplus(-3.9) = 0.0200: the bias that puts the step at ~0.02.
SMALL_DT_BIAS = -3.9


def mambapy_available() -> bool:
    return importlib.util.find_spec("mambapy") is not None


def make_inputs(batch: int, dim: int, state_size: int, seq_len: int, regime: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    bias = SMALL_DT_BIAS if regime.startswith("small") else 0.0
    return dict(
        u=torch.randn(batch, dim, seq_len, generator=g),
        delta=0.25 * torch.randn(batch, dim, seq_len, generator=g),
        A=-torch.arange(1, state_size + 1, dtype=torch.float32).repeat(dim, 1),  # Mamba's S4D-real initialisation
        B=torch.randn(batch, state_size, seq_len, generator=g),
        C=torch.randn(batch, state_size, seq_len, generator=g),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, seq_len, generator=g),
        delta_bias=torch.full((dim,), bias),
    )


def scan_fn(path: str):
    """The path as `fn(u, delta, A, B, C, D, z, delta_bias) -> (y, final_state)`, softplus on the step."""
    if path == "hf_longssm":
        from hf_longssm.modeling import selective_scan

        return lambda u, delta, A, B, C, D, z, delta_bias: selective_scan(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus=True
        )
    if path == "mambapy":
        from mambapy.pscan import pscan

        def mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
            # transformers' `mamba_selective_scan` with use_mambapy=True, line for line.
            dt = F.softplus(delta + delta_bias[:, None])
            discrete_A = torch.exp(A[None, :, None, :] * dt[:, :, :, None])
            deltaB_u = dt[:, :, :, None] * B.transpose(1, 2)[:, None, :, :] * u[:, :, :, None]
            all_states = pscan(discrete_A.transpose(1, 2), deltaB_u.transpose(1, 2))  # (b, l, d, n)
            y = (all_states @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3).transpose(1, 2)
            return (y + u * D[None, :, None]) * F.silu(z), all_states[:, -1]

        return mambapy_scan
    if path == "transformers":
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan

        loop = getattr(mamba_selective_scan, "__wrapped__", mamba_selective_scan)  # the torch path, not a hub kernel
        return lambda u, delta, A, B, C, D, z, delta_bias: loop(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, return_last_state=True
        )
    raise ValueError(f"unknown path {path!r}; choose from {PATHS}")


def run(fn, inputs: dict, backward: bool, probes: tuple[torch.Tensor, torch.Tensor]):
    """One call; with `backward`, the gradient of <y, probe_y> + <h, probe_h> w.r.t. every input."""
    if not backward:
        with torch.no_grad():
            return fn(**inputs), None
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    y, h = fn(**leaves)
    ((y * probes[0]).sum() + (h * probes[1]).sum()).backward()
    return (y.detach(), h.detach()), {k: v.grad for k, v in leaves.items()}


def probes_for(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    batch, dim, seq_len = inputs["u"].shape
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, dim, seq_len, generator=g), torch.randn(batch, dim, inputs["A"].shape[1], generator=g)


def runs_backward(path: str, shape_name: str, args) -> bool:
    return path != "transformers" or shape_name in args.transformers_backward_shapes


def relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.float() - theirs.float()).abs().max() / ours.float().abs().max().clamp_min(1e-30)).item()


def measure_time(shape_name: str, paths: list[str], args) -> dict:
    """One subprocess: every path in turn (interleaved medians), then each path's outputs against hf_longssm's."""
    shape = SHAPES[shape_name]
    inputs = make_inputs(*shape)
    probes = probes_for(inputs)
    fns = {p: scan_fn(p) for p in paths}
    out = {"load_average_before": os.getloadavg()}
    out["forward"] = interleaved_medians(
        {p: (lambda p=p: run(fns[p], inputs, False, probes)) for p in paths}, args.repeats, args.max_seconds
    )
    interleaved = [p for p in paths if p != "transformers"]
    out["forward_backward"] = interleaved_medians(
        {p: (lambda p=p: run(fns[p], inputs, True, probes)) for p in interleaved}, args.repeats, args.max_seconds
    )
    if "transformers" in paths:  # minutes per run: timed once, after the others
        if runs_backward("transformers", shape_name, args):
            seconds = timed(lambda: run(fns["transformers"], inputs, True, probes))
            out["forward_backward"]["transformers"] = {"median_s": seconds, "runs": 1, "all_s": [round(seconds, 4)]}
        else:
            out["forward_backward"]["transformers"] = {"skipped": "quadratic backward (a full-size gradient per step)"}
    out["load_average_after"] = os.getloadavg()
    (y, h), grads = run(fns["hf_longssm"], inputs, True, probes)
    out["max_relative_difference_to_hf_longssm"] = {}
    for p in paths:
        if p == "hf_longssm":
            continue
        # transformers' gradients would cost another quadratic backward; its forward is compared.
        (y_p, h_p), grads_p = run(fns[p], inputs, p != "transformers", probes)
        diffs = {"y": relative_difference(y, y_p), "final_state": relative_difference(h, h_p)}
        for k, g in (grads_p or {}).items():
            diffs[f"grad_{k}"] = relative_difference(grads[k], g)
        out["max_relative_difference_to_hf_longssm"][p] = diffs
    return out


def measure_memory(shape_name: str, path: str, backward: bool) -> dict:
    """One subprocess, one path, one mode: peak RSS above the inputs (after a warm-up that loads the code paths)."""
    shape = SHAPES[shape_name]
    fn = scan_fn(path)
    warm = make_inputs(1, 8, shape[2], 64, shape[4])
    run(fn, warm, backward, probes_for(warm))
    inputs = make_inputs(*shape)
    probes = probes_for(inputs)
    base = reset_peak_rss_mib()
    run(fn, inputs, backward, probes)
    return {"peak_rss_mib": peak_rss_mib() - base}


def subprocess_json(args, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    cmd += ["--max_seconds", str(args.max_seconds), "--paths", *args.paths]
    cmd += ["--transformers_backward_shapes", *args.transformers_backward_shapes, *extra]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"timeout_s": args.timeout}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(data: dict) -> str:
    """The markdown table of one results file: fwd+bwd and forward times, ratios, peak memory, exactness."""
    return "\n".join([f"`{data['command']}`", "", *mamba1_scan_table(data)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=[s for s in SHAPES if s != "tiny"], choices=list(SHAPES))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every subprocess")
    parser.add_argument(
        "--transformers_backward_shapes",
        nargs="*",
        default=["small"],
        choices=list(SHAPES),
        help="the shapes where transformers' quadratic loop backward runs",
    )
    parser.add_argument("--max_seconds", type=float, default=120.0, help="do not repeat a run slower than this")
    parser.add_argument("--no_memory", action="store_true", help="skip the per-path memory subprocesses")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on one subprocess after this")
    parser.add_argument("--output", default="benchmarks/results/mamba1_scan_cpu.json")
    parser.add_argument("--table", metavar="JSON", help="print the markdown table of a results file and exit")
    parser.add_argument("--_time", help=argparse.SUPPRESS)
    parser.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    paths = [p for p in args.paths if p != "mambapy" or mambapy_available()]
    if args._time:
        print(json.dumps(measure_time(args._time, paths, args)))
        return
    if args._memory:
        shape_name, path, mode = args._memory
        print(json.dumps(measure_memory(shape_name, path, mode == "forward_backward")))
        return

    if "mambapy" in args.paths and "mambapy" not in paths:
        print("mambapy is not installed (pip install mambapy==1.2.0 --no-deps): its column is skipped.", flush=True)
    if "hf_longssm" not in paths:
        parser.error("--paths must include hf_longssm (the other paths are compared with it)")
    versions = {}
    for name in ("mambapy",):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    rows = []
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        row = {"shape_name": shape_name, "shape": shape, "time": subprocess_json(args, "--_time", shape_name)}
        row["memory"] = {"forward": {}, "forward_backward": {}}
        if not args.no_memory:
            for mode in row["memory"]:
                for path in paths:
                    if mode == "forward_backward" and not runs_backward(path, shape_name, args):
                        continue
                    row["memory"][mode][path] = subprocess_json(args, "--_memory", shape_name, path, mode)
        rows.append(row)
        summary = {
            mode: {p: row["time"].get(mode, {}).get(p, {}).get("median_s") for p in paths}
            for mode in ("forward", "forward_backward")
        }
        print(json.dumps({"shape": shape_name, **summary, "memory": row["memory"]}), flush=True)
        write_results(
            args.output,
            {"threads": args.threads, "extra_versions": versions, "rows": rows},
        )
    print(table(json.loads(Path(args.output).read_text())))


if __name__ == "__main__":
    main()
