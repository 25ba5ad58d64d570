"""Evaluate models far past their training context: perplexity by position, passkey, remembrance, state norms.

    hf-longssm eval --model <id or path> [<id or path> ...] --task <task> [--data <files or dataset>] ...

Tasks: `position_ppl` (perplexity by position), `passkey`, `effrem` (effective remembrance), `state_norms`,
`babilong_qa1` ... `babilong_qa5` (BABILong's offline twin, `evaluation/babilong.py`: accuracy per --lengths, with
--num_trials stories per length), `copying` (synthetic copying, `evaluation/copying.py`: per-token and exact-match
copy accuracy per --lengths, --num_trials examples each; needs single-character tokens, e.g. the byte tokenizer).
Writes `<output_dir>/<task>.json` (with the command, versions and model ids; an existing file is never
overwritten: a numbered name is used) and PNG plots; several models go into one comparison figure and table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shlex
import sys
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .. import evaluation
from ..evaluation.plots import plot_eval
from ..evaluation.text import documents_to_input_ids
from ..extension import CONFIG_KEY
from ..hub import results_table
from ..loading import model_config_file, resolve_model, resolve_tokenizer
from ..modeling import unwrap_model
from ..sources import OFFLINE_SHAKESPEARE, get_source
from ..versions import package_versions
from .results import free_path, write_json


BABILONG_TASKS = tuple(f"babilong_{task}" for task in ("qa1", "qa2", "qa3", "qa4", "qa5"))
TASKS = ("position_ppl", "passkey", "effrem", "state_norms", *BABILONG_TASKS, "copying")
# Tasks that build their own prompts (of --lengths) rather than read --data.
PROMPT_TASKS = ("passkey", *BABILONG_TASKS, "copying")
# Recorded in every results file: what the numbers depend on.
RESULT_PACKAGES = ("python", "hf-longssm", "torch", "transformers")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count or a length of 0 would evaluate nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-longssm eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", required=True, help="Hub ids or local paths; several make a comparison.")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--tokenizer", default=None, help="'byte', a Hub id or path (default: the model's).")
    p.add_argument(
        "--data",
        nargs="+",
        default=[OFFLINE_SHAKESPEARE],
        help=f"text files (one document each), a Hub dataset id, or {OFFLINE_SHAKESPEARE} (held-out plays).",
    )
    p.add_argument(
        "--split", default=None, help="split of the dataset (default: 'test' for a Hub dataset, 'held_out' offline)"
    )
    p.add_argument(
        "--length", type=positive_int, default=16384, help="tokens per sequence (position_ppl, effrem, norms)"
    )
    p.add_argument("--num_sequences", type=positive_int, default=8)
    p.add_argument("--segment_length", type=positive_int, default=4096)
    p.add_argument(
        "--attention_state",
        choices=("window", "none", "full"),
        default="window",
        help="hybrids: keys carried between segments (window: the last --attention_window, default a segment)",
    )
    p.add_argument("--attention_window", type=positive_int, default=None, help="hybrids: keys kept under window")
    p.add_argument(
        "--bucket_start",
        type=positive_int,
        default=None,
        help="first log-spaced bucket edge (default: the training context, else 16: no single-token buckets)",
    )
    p.add_argument(
        "--train_context",
        type=positive_int,
        default=None,
        help="the models' training context, marked in the plots (default: read from the model card)",
    )
    p.add_argument(
        "--lengths",
        type=positive_int,
        nargs="+",
        default=[1024, 2048, 4096],
        help="passkey, babilong prompt lengths; copying sequence lengths",
    )
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument(
        "--num_trials",
        type=positive_int,
        default=3,
        help="passkey: keys per cell; babilong: stories; copying: examples per length",
    )
    p.add_argument("--T", type=positive_int, default=None, help="effrem: context length (default --length)")
    p.add_argument("--ts", type=non_negative_int, nargs="+", default=None, help="effrem: start offsets t")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output_dir", default="outputs/eval")
    p.add_argument("--no_plot", action="store_true")
    return p


def eval_source(data: list[str]):
    """The `DataSource` of `--data`: local files (each one document, whatever its extension) or one dataset name."""
    missing = [d for d in data if not Path(d).is_file()]
    if not missing:
        return get_source(data_files=data, file_format="text")
    if len(data) == 1:
        return get_source(dataset_name=data[0])
    raise ValueError(f"--data takes local files or one dataset name; not files: {missing}.")


def load_eval_documents(data: list[str], split: str | None = None):
    """The documents of `--data` (see `eval_source`).

    Args:
        data (`list[str]`): file paths, or one dataset name (a Hub id, streamed, or an offline corpus).
        split (`str`, *optional*): the dataset's split; defaults to the source's evaluation split.
    """
    source = eval_source(data)
    return source.load(split=split or source.eval_split, streaming=True)


def data_identity(data: list[str], split: str) -> dict:
    """What `--data` names, comparable across commands: local files by the SHA-256 of their bytes (whatever path
    or order they are given in; a file has one split) and their names, never their paths (this goes into a model's
    config, which may be published), a dataset by its name and split."""
    if all(Path(d).is_file() for d in data):
        return {"files": [{"name": Path(d).name, "sha256": _sha256(Path(d))} for d in data]}
    return {"dataset": data[0], "split": split}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_not_calibration_data(model_id: str, data: list[str], split: str, config: dict | None = None) -> None:
    """Refuse to evaluate a model with a training-free length extension on text it was calibrated on: any of the
    same files (by content), or the same dataset split. `config`: a loaded model's (else read from `model_id`)."""
    config = config if config is not None else json.loads(model_config_file(model_id).read_text())
    calibration = (config.get(CONFIG_KEY) or {}).get("calibration_data")
    if not calibration:
        return
    asked = data_identity(data, split)
    calibrated = {entry["sha256"] for entry in calibration.get("files", [])}
    shared = sorted(entry["name"] for entry in asked.get("files", []) if entry["sha256"] in calibrated)
    same_split = "dataset" in asked and (calibration.get("dataset"), calibration.get("split")) == (
        asked["dataset"], asked["split"]
    )  # fmt: skip
    if shared or same_split:
        what = f"the files {shared}" if shared else f"{asked['dataset']} (split {split!r})"
        raise ValueError(
            f"{model_id}'s length extension was calibrated on {what}, which you asked to evaluate on: its scores "
            "would be inflated. Evaluate on other text: other files, or another split of the dataset."
        )


def card_train_context(model_id: str) -> int | None:
    """The training context (`segment_length`) from a local model's hf_longssm card, if it has one."""
    card = Path(model_id) / "README.md"
    match = re.search(r"^\| segment_length \| (\d+) \|", card.read_text(), re.M) if card.is_file() else None
    return int(match.group(1)) if match else None


def run_task(
    args: argparse.Namespace, model_id: str, input_ids: torch.Tensor | None, model: PreTrainedModel | None = None
) -> dict:
    """One model's results for `args.task` (JSON-ready): `model` if given (`model_id` then only names it), else the
    model `model_id` loads."""
    model = resolve_model(model=model) if model is not None else resolve_model(model_id=model_id, device=args.device)
    if args.task == "position_ppl":
        # One sequence at a time: the spread across sequences gives each bucket a 95% confidence band.
        rows = [
            evaluation.position_perplexity(
                model, input_ids[i : i + 1], args.segment_length, progress=True, **attention_policy(args)
            )
            for i in range(input_ids.shape[0])
        ]
        nll = torch.stack([r.nll for r in rows])
        mean = evaluation.PositionPerplexity(nll=nll.mean(0), num_sequences=len(rows))
        buckets = mean.perplexity(evaluation.log_buckets(nll.shape[1], args.bucket_start))
        for bucket in buckets:
            per_row = nll[:, bucket["start"] : bucket["end"]].double().mean(1)
            half_width = 1.96 * per_row.std().item() / math.sqrt(len(rows)) if len(rows) > 1 else 0.0
            bucket["perplexity_low"] = math.exp(bucket["nll"] - half_width)
            bucket["perplexity_high"] = math.exp(bucket["nll"] + half_width)
        return {"buckets": buckets, "nll": mean.nll.tolist()}
    if args.task == "state_norms":
        return evaluation.state_norms_by_position(model, input_ids, args.segment_length)
    if args.task == "effrem":
        T = args.T or input_ids.shape[1]
        ts = args.ts or [0] + [2**k for k in range(int(math.log2(T)))]
        res = evaluation.effective_remembrance(model, input_ids, T, [t for t in ts if t < T], args.segment_length)
        return {"T": T, "effrem": {str(k): v for k, v in res.items()}}
    tokenizer = resolve_tokenizer(args.tokenizer, model_id)
    if args.task in BABILONG_TASKS:
        task = args.task.removeprefix("babilong_")
        cells = evaluation.babilong_accuracy(
            model, tokenizer, task, args.lengths, num_samples=args.num_trials, segment_length=args.segment_length,
            **attention_policy(args),
        )  # fmt: skip
        return {"cells": cells}
    if args.task == "copying":
        cells = evaluation.copying_accuracy(
            model, tokenizer, args.lengths, num_trials=args.num_trials, segment_length=args.segment_length,
            **attention_policy(args),
        )  # fmt: skip
        return {"cells": cells}
    return {
        "cells": evaluation.passkey_retrieval(
            model,
            tokenizer,
            args.lengths,
            args.depths,
            num_trials=args.num_trials,
            segment_length=args.segment_length,
            **attention_policy(args),
        )
    }


def attention_policy(args: argparse.Namespace) -> dict:
    """A hybrid's attention policy from the command line (pure Mamba models carry no keys: it changes nothing)."""
    return {"attention_state": args.attention_state, "attention_window": args.attention_window}


def main(argv: list[str] | None = None, model: PreTrainedModel | None = None) -> Path:
    """Run `hf-longssm eval` and return the path of the results JSON.

    Args:
        argv (`list[str]`, *optional*): the command line (default `sys.argv[1:]`).
        model (`PreTrainedModel`, *optional*): a loaded model to evaluate (`hl.evaluate`); `--model` then names it
            (one name) and finds its tokenizer.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task not in ("position_ppl", *PROMPT_TASKS) and (
        args.attention_state != "window" or args.attention_window
    ):
        parser.error(f"--attention_state / --attention_window do not apply to {args.task}.")
    if args.train_context is None:
        args.train_context = card_train_context(args.model[0])
    if args.bucket_start is None:
        args.bucket_start = args.train_context or 16
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None and len(args.model) != 1:
        raise ValueError("A loaded model is evaluated alone: give one --model name for it.")
    for model_id in args.model if model is None else ():  # a name that is no model: an error before the tokenizer
        model_config_file(model_id)
    input_ids = None
    if args.task not in PROMPT_TASKS:
        split = args.split or eval_source(args.data).eval_split
        for model_id in args.model:
            config = None if model is None else unwrap_model(model).config.to_dict()
            check_not_calibration_data(model_id, args.data, split, config)
        tokenizer = resolve_tokenizer(args.tokenizer, args.model[0])
        documents = load_eval_documents(args.data, args.split)
        input_ids = documents_to_input_ids(documents, tokenizer, args.length, args.num_sequences)
    results = {model_id: run_task(args, model_id, input_ids, model) for model_id in args.model}
    payload = {
        "task": args.task,
        "command": "hf-longssm eval " + shlex.join(argv),
        "versions": package_versions(RESULT_PACKAGES),
        "models": list(args.model),
        "input_shape": None if input_ids is None else list(input_ids.shape),
        "train_context": args.train_context,
        "results": results,
    }
    json_path = write_json(payload, out / f"{args.task}.json")
    if args.task == "position_ppl":
        names = short_names(list(results))
        table = results_table({names[m]: r["buckets"] for m, r in results.items()})
        free_path(out / "position_ppl.md").write_text(table + "\n")
        print(table)
    if not args.no_plot:
        plot_eval(args.task, results, free_path(out / f"{args.task}.png"), train_context=args.train_context)
    print(f"wrote {json_path}")
    return json_path


def short_names(models: list[str]) -> dict[str, str]:
    """A column title per model: its folder's name, with as many parent folders as it takes to tell them apart
    (`runA/checkpoint-500` and `runB/checkpoint-500`)."""
    for depth in range(1, max(len(Path(m).parts) for m in models) + 1):
        names = {m: "/".join(Path(m).parts[-depth:]) for m in models}
        if len(set(names.values())) == len(models):
            return names
    return {m: m for m in models}
