"""Command line: `python -m hf_longssm.evaluate --model <id or path> [<id or path> ...] --task <task> ...`.

Tasks: `position_ppl` (perplexity by position), `passkey`, `effrem` (effective remembrance), `state_norms`.
Writes `<output_dir>/<task>.json` (with the command, versions and model ids; an existing file is never
overwritten: a numbered name is used) and PNG plots; several models go into one comparison figure and table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import shlex
import sys
from pathlib import Path

import torch

from . import evaluation
from .evaluation.loading import resolve_model, resolve_tokenizer
from .evaluation.text import documents_to_input_ids
from .hub import results_table


TASKS = ("position_ppl", "passkey", "effrem", "state_norms")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-longssm eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", required=True, help="Hub ids or local paths; several make a comparison.")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--tokenizer", default=None, help="'byte', a Hub id or path (default: the model's).")
    p.add_argument(
        "--data",
        nargs="+",
        default=["hf_longssm/offline-shakespeare"],
        help="text files, a Hub dataset id, or hf_longssm/offline-shakespeare (held-out plays).",
    )
    p.add_argument("--split", default="test", help="split of a Hub dataset")
    p.add_argument("--length", type=int, default=16384, help="tokens per sequence (position_ppl, effrem, norms)")
    p.add_argument("--num_sequences", type=int, default=8)
    p.add_argument("--segment_length", type=int, default=4096)
    p.add_argument("--bucket_start", type=int, default=1, help="first log-spaced bucket edge")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096], help="passkey prompt lengths")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--num_trials", type=int, default=3)
    p.add_argument("--T", type=int, default=None, help="effrem: context length (default --length)")
    p.add_argument("--ts", type=int, nargs="+", default=None, help="effrem: start offsets t")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output_dir", default="outputs/eval")
    p.add_argument("--no_plot", action="store_true")
    return p


def _documents(args):
    if args.data == ["hf_longssm/offline-shakespeare"]:
        from .corpus import load_offline_books

        return load_offline_books()["held_out"]
    if all(Path(d).is_file() for d in args.data):
        return [Path(d).read_text(encoding="utf-8") for d in args.data]
    import datasets

    return datasets.load_dataset(args.data[0], split=args.split, streaming=True)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("hf-longssm", "torch", "transformers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _free_path(path: Path) -> Path:
    """`path`, or `path` with a number added when it exists: results already written are never lost."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def run_task(args, model_id: str, input_ids: torch.Tensor | None):
    model = resolve_model(model_id=model_id, device=args.device)
    if args.task == "position_ppl":
        res = evaluation.position_perplexity(model, input_ids, args.segment_length, progress=True)
        return {
            "buckets": res.perplexity(evaluation.log_buckets(len(res.nll), args.bucket_start)),
            "nll": res.nll.tolist(),
        }
    if args.task == "state_norms":
        return evaluation.state_norms_by_position(model, input_ids, args.segment_length)
    if args.task == "effrem":
        T = args.T or input_ids.shape[1]
        ts = args.ts or [0] + [2**k for k in range(int(math.log2(T)))]
        res = evaluation.effective_remembrance(model, input_ids, T, [t for t in ts if t < T], args.segment_length)
        return {"T": T, "effrem": {str(k): v for k, v in res.items()}}
    tokenizer = resolve_tokenizer(args.tokenizer, model_id)
    return {
        "cells": evaluation.passkey_retrieval(
            model, tokenizer, args.lengths, args.depths, num_trials=args.num_trials, segment_length=args.segment_length
        )
    }


def plot(task: str, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if task == "passkey":
        fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False, layout="constrained")
        for ax, (name, res) in zip(axes[0], results.items()):
            lengths = sorted({c["length"] for c in res["cells"]})
            depths = sorted({c["depth"] for c in res["cells"]})
            grid = [
                [next(c["accuracy"] for c in res["cells"] if c["length"] == n and c["depth"] == d) for n in lengths]
                for d in depths
            ]
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            ax.set_xticks(range(len(lengths)), lengths)
            ax.set_yticks(range(len(depths)), depths)
            ax.set_xlabel("prompt length (tokens)")
            ax.set_ylabel("key depth")
            ax.set_title(Path(name).name)
        fig.colorbar(im, ax=axes[0].tolist(), label="accuracy")
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, res in results.items():
            if task == "position_ppl":
                xs = [math.sqrt(max(b["start"], 1) * b["end"]) for b in res["buckets"]]
                ax.plot(xs, [b["perplexity"] for b in res["buckets"]], marker="o", label=Path(name).name)
                ax.set_ylabel("perplexity")
            elif task == "state_norms":
                for layer in range(len(res["norms"][0])):
                    ax.plot(res["positions"], [n[layer] for n in res["norms"]], label=f"{Path(name).name} L{layer}")
                ax.set_ylabel("SSM state norm")
            else:
                ts = sorted(int(t) for t in res["effrem"])
                ax.plot(
                    [max(t, 1) for t in ts], [res["effrem"][str(t)] for t in ts], marker="o", label=Path(name).name
                )
                ax.set_ylabel(f"EffRem_T(t), T={res['T']}")
        ax.set_xscale("log")
        ax.set_xlabel("token position" if task != "effrem" else "t")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    input_ids = None
    if args.task != "passkey":
        tokenizer = resolve_tokenizer(args.tokenizer, args.model[0])
        input_ids = documents_to_input_ids(_documents(args), tokenizer, args.length, args.num_sequences)
    results = {model_id: run_task(args, model_id, input_ids) for model_id in args.model}
    command = "python -m hf_longssm.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
    payload = {
        "task": args.task,
        "command": command,
        "versions": _versions(),
        "models": list(args.model),
        "input_shape": None if input_ids is None else list(input_ids.shape),
        "results": results,
    }
    json_path = _free_path(out / f"{args.task}.json")
    json_path.write_text(json.dumps(payload, indent=2))
    if args.task == "position_ppl":
        table = results_table({Path(m).name: r["buckets"] for m, r in results.items()})
        _free_path(out / "position_ppl.md").write_text(table + "\n")
        print(table)
    if not args.no_plot:
        plot(args.task, results, _free_path(out / f"{args.task}.png"))
    print(f"wrote {json_path}")
    return json_path


if __name__ == "__main__":
    main()
