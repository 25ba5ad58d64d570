"""Run lm-evaluation-harness tasks at long lengths with the state carried (no 2048-token truncation).

    hf-longssm lm-eval --model <id or path> [<id or path> ...] [--tasks ...] [--max_length 4096 16384] ...

Each model is read by `hf_longssm.evaluation.harness.LongSSMLM` (segments of `--segment_length` tokens, state
carried) and evaluated with `lm_eval.simple_evaluate` once per length of `--max_length` (the tasks' prompt lengths in
tokens). Writes lm-eval's own results JSON per model and length (`<output_dir>/<model>/length_<n>/results_<date>.json`)
and one markdown table of every task x length x model (`<output_dir>/lm_eval.md`, also printed). The default tasks all
build their data locally (no network): this project's passkey, fact retrieval and offline RULER essay needles, and
RULER's needle, variable-tracking and word-frequency tasks. Needs `pip install "hf-longssm[lm-eval]"`.

lm-eval's own BABILong tasks (`--tasks babilong_longctx`, `babilong`, `babilong_qa1` ...) run once per length of
`--babilong_lengths` (the dataset's configs, 0k to 128k; `all`: every one the copy holds), reading the Hub dataset
RMT-team/babilong-1k-samples from a local copy: `--babilong_path DIR`, else the Hub cache's (offline too). Their
results land in `<output_dir>/<model>/babilong_<length>/`.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from ..versions import package_versions
from .eval import positive_int
from .results import free_path, write_json


try:  # lm-eval is an optional extra: every other command works without it
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from ..evaluation import harness
except ModuleNotFoundError as error:  # pragma: no cover - exercised only without the extra
    if (error.name or "").split(".")[0] != "lm_eval":
        raise
    lm_eval = EvaluationTracker = harness = None
    _MISSING = error
else:
    _MISSING = None


# What the table shows for a task that reports several metrics (bits per byte compares tokenizers fairly).
PREFERRED_METRICS = ("acc", "exact_match", "bits_per_byte")
# Recorded in the summary JSON: what the numbers depend on.
RESULT_PACKAGES = ("python", "hf-longssm", "torch", "transformers", "lm-eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-longssm lm-eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", required=True, help="Hub ids or local paths; several are compared.")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        help="lm-eval task names (default: the offline long-context suite, see the module docstring).",
    )
    p.add_argument("--tokenizer", default=None, help="'byte', a Hub id or path (default: the model's).")
    p.add_argument(
        "--max_length",
        type=positive_int,
        nargs="+",
        default=[4096],
        help="prompt lengths in tokens, one lm-eval run each (the tasks' max_seq_lengths); RULER's own tasks report "
        "only 4096, 8192, ..., 131072",
    )
    p.add_argument(
        "--babilong_lengths",
        nargs="+",
        default=["0k"],  # lm-eval's own, when a task's metadata names no length
        help="lengths of lm-eval's babilong tasks, one run each: the dataset's configs (0k 1k 2k 4k 8k 16k 32k 64k "
        "128k), or 'all' (every one the copy holds); default: lm-eval's, 0k",
    )
    p.add_argument(
        "--babilong_path",
        default=None,
        help="a local copy of the Hub dataset RMT-team/babilong-1k-samples (its README.md and parquet files) for "
        "lm-eval's babilong tasks; default: the Hub cache's",
    )
    p.add_argument("--segment_length", type=positive_int, default=4096, help="tokens per forward (sets memory)")
    p.add_argument("--limit", type=positive_int, default=None, help="prompts per task and length (default: all)")
    p.add_argument(
        "--num_samples", type=positive_int, default=None, help="prompts generated per length by the longssm_* tasks"
    )
    p.add_argument("--batch_size", type=positive_int, default=1, help="rows per forward (equal lengths only)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--seed", type=int, default=0, help="data and lm-eval seeds")
    p.add_argument("--include_path", nargs="+", default=[], help="more folders of task YAMLs")
    p.add_argument(
        "--all_lm_eval_tasks", action="store_true", help="index all of lm-eval's tasks (~10 s; automatic when needed)"
    )
    p.add_argument("--log_samples", action="store_true", help="also write lm-eval's per-sample JSONL")
    p.add_argument("--output_dir", default="outputs/lm_eval")
    return p


def model_label(model_id: str) -> str:
    """A short, file-safe name for a model id or path (`outputs/demo/base` -> `base`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_id.rstrip("/")).name or model_id)


def primary_metric(task_results: dict[str, Any], length: int) -> tuple[str, float] | None:
    """The number to show for one task at one length: RULER's per-length metric (named by the length), else the
    first of `PREFERRED_METRICS` there is, else the first metric that is not a standard error."""
    for key, value in task_results.items():
        if key.split(",")[0] == str(length) and isinstance(value, (int, float)):
            return "string_match", float(value)
    numbers = {
        key.split(",")[0]: float(value)
        for key, value in task_results.items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    for name in PREFERRED_METRICS:
        if name in numbers:
            return name, numbers[name]
    return next(iter(numbers.items()), None)


def _row_order(row: tuple[tuple[str, int | str], Any]) -> tuple[str, float]:
    """Tasks by name, each by length: tokens, or a BABILong length (`16k`) by its nominal size."""
    (task, length), _ = row
    return task, length if isinstance(length, int) else harness.babilong_length_tokens(length)


def results_table(rows: dict[tuple[str, int | str], dict[str, tuple[str, float]]], labels: list[str]) -> str:
    """Markdown: one row per (task, length), one column per model."""
    lines = ["| task | metric | length | " + " | ".join(labels) + " |", "|---|---|---:|" + "---:|" * len(labels)]
    for (task, length), per_model in sorted(rows.items(), key=_row_order):
        metric = next(iter(per_model.values()))[0]
        cells = [f"{per_model[label][1]:.3f}" if label in per_model else "-" for label in labels]
        lines.append(f"| {task} | {metric} | {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _device(requested: str | None) -> str:
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> Path:
    """Run `hf-longssm lm-eval` and return the path of the markdown table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if _MISSING is not None:
        raise SystemExit(
            f'hf-longssm lm-eval needs lm-evaluation-harness ({_MISSING}): pip install "hf-longssm[lm-eval]".'
        )
    tasks = list(args.tasks or harness.OFFLINE_TASKS)
    babilong_tasks = [task for task in tasks if task in harness.babilong_tasks()]
    tasks = [task for task in tasks if task not in babilong_tasks]
    given = [f"--{name}" for name in ("babilong_path", "babilong_lengths") if f"--{name}" in " ".join(argv)]
    if given and not babilong_tasks:  # they would be ignored: a typo in --tasks, most likely
        raise SystemExit(f"{' / '.join(given)} apply to lm-eval's babilong tasks, and --tasks names none of them.")
    # Before any model loads: the copy of lm-eval's BABILong dataset, its lengths, and what each can run.
    babilong_folder, babilong_lengths = _babilong_runs(babilong_tasks, args)
    for task in tasks:
        if task in harness.RULER_DOWNLOAD_TASKS:
            print(f"note: {task} downloads {harness.RULER_DOWNLOAD_TASKS[task]}; it fails offline.", file=sys.stderr)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(args.device)
    labels = [model_label(m) for m in args.model]
    if len(set(labels)) != len(labels):
        labels = [f"{i}_{label}" for i, label in enumerate(labels)]
    rows: dict[tuple[str, int | str], dict[str, tuple[str, float]]] = {}
    written, skipped = [], {}
    for model_id, label in zip(args.model, labels):
        lm = harness.LongSSMLM(
            model_id,
            tokenizer=args.tokenizer,
            segment_length=args.segment_length,
            dtype=args.dtype,
            device=device,
            batch_size=args.batch_size,
        )
        model_args = {"pretrained": model_id, "tokenizer": args.tokenizer, "segment_length": args.segment_length}
        model_args |= {"dtype": args.dtype, "device": device, "batch_size": args.batch_size}
        runs = []  # (length, tasks, task manager, folder, BABILong copy or None)
        for length in args.max_length if tasks else []:
            problems = harness.ruler_problems(tasks, lm, length)
            if problems and args.tasks:
                raise SystemExit(
                    "\n".join(f"{task} cannot run at {length} tokens: {why}." for task, why in problems.items())
                )
            for task, why in problems.items():
                skipped[f"{label} @ {length}: {task}"] = why
                print(f"skipping {task} for {label} at {length} tokens: {why}", file=sys.stderr)
            run_tasks = [task for task in tasks if task not in problems]
            run_dir = out / label / f"length_{length}"
            runs.append((length, run_tasks, _task_manager(lm, length, args, run_tasks, run_dir), run_dir, None))
        for length in babilong_lengths:
            manager = harness.babilong_task_manager(length, args.include_path)
            runs.append((length, babilong_tasks, manager, out / label / f"babilong_{length}", babilong_folder))
        for length, run_tasks, manager, run_dir, copy in runs:
            # lm-eval reads the BABILong dataset while it loads the tasks, inside simple_evaluate
            with harness.local_babilong(copy, [length]) if copy is not None else contextlib.nullcontext():
                results, path = _evaluate(lm, model_args, run_tasks, manager, run_dir, args)
            written.append(path)
            for task_name, task_results in results["results"].items():
                metric = primary_metric(task_results, length)
                if metric is not None:
                    rows.setdefault((task_name, length), {})[label] = metric

    table = results_table(rows, labels)
    table_path = free_path(out / "lm_eval.md")
    command = "hf-longssm lm-eval " + shlex.join(argv)
    notes = "".join(f"\n- skipped {where}: {why}" for where, why in skipped.items())
    table_path.write_text(f"`{command}`\n\n{table}\n{notes}\n")
    write_json(
        {
            "command": command,
            "versions": package_versions(RESULT_PACKAGES),
            "models": dict(zip(labels, args.model)),
            "lengths": args.max_length if tasks else [],
            "babilong_lengths": babilong_lengths,
            "babilong_copy": None if babilong_folder is None else str(babilong_folder),
            "segment_length": args.segment_length,
            "table": [
                {"task": task, "length": length, "model": label, "metric": metric, "value": value}
                for (task, length), per_model in sorted(rows.items(), key=_row_order)
                for label, (metric, value) in per_model.items()
            ],
            "lm_eval_results": [str(p) for p in written],
            "skipped": skipped,
        },
        out / "lm_eval.json",
    )
    print(table)
    print(f"wrote {table_path} and lm-eval's results under {out}")
    return table_path


def _evaluate(lm, model_args: dict[str, Any], tasks: list[str], manager, run_dir: Path, args: argparse.Namespace):
    """One `lm_eval.simple_evaluate` run, its results JSON (and samples) written under `run_dir`."""
    results = lm_eval.simple_evaluate(
        model=lm,
        model_args=model_args,
        tasks=tasks,
        task_manager=manager,
        limit=args.limit,
        log_samples=args.log_samples,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
        evaluation_tracker=(tracker := EvaluationTracker(output_path=str(run_dir / "results.json"))),
    )
    samples = results.pop("samples", None) if args.log_samples else None
    tracker.save_results_aggregated(results=results, samples=samples)
    if samples:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    return results, max(run_dir.glob("results_*.json"), key=lambda p: p.stat().st_mtime)


def _babilong_runs(tasks: list[str], args: argparse.Namespace) -> tuple[Path | None, list[str]]:
    """The copy of lm-eval's BABILong dataset and the lengths to run; refuses, naming them, what cannot run."""
    if not tasks:
        return None, []
    try:
        folder = harness.babilong_copy(args.babilong_path)
        asked = list(dict.fromkeys(args.babilong_lengths))
        lengths = harness.babilong_lengths(folder) if "all" in asked else asked
        if not lengths:  # `all` of a copy that holds no complete length: nothing would run
            harness.babilong_copy(folder, ["0k"])
        harness.babilong_copy(folder, lengths)  # every length asked is in the copy
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    problems = [
        f"{task} cannot run at {length}: {why}."
        for length in lengths
        for task, why in harness.babilong_problems(tasks, length, folder).items()
    ]
    if problems:
        raise SystemExit("\n".join(problems))
    return folder, lengths


def _task_manager(lm, length: int, args: argparse.Namespace, tasks: list[str], run_dir: Path):
    """Only RULER's and this project's tasks are indexed (0.1 s) unless a task is not among them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(seed=args.seed, num_samples=args.num_samples, include_path=args.include_path)
    kwargs["save_tokenizer_to"] = run_dir / "tokenizer"
    manager = harness.task_manager(lm, [length], include_defaults=args.all_lm_eval_tasks, **kwargs)
    if not args.all_lm_eval_tasks and any(task not in manager.all_tasks for task in tasks):
        manager = harness.task_manager(lm, [length], include_defaults=True, **kwargs)
    return manager
