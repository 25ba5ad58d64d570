"""Long-context tasks run while post-training (`StatePassingConfig.eval_tasks`): passkey retrieval, the offline
BABILong twin and synthetic copying, at the same seeded prompts at every evaluation, as `hf-longssm eval` runs them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..evaluation.babilong import GENERATORS, babilong_accuracy
from ..evaluation.copying import copying_accuracy
from ..evaluation.passkey import passkey_retrieval


# The depths passkey hides its key at while training (early, middle, late in the prompt).
PASSKEY_DEPTHS = (0.1, 0.5, 0.9)
EVAL_TASKS = ("passkey", *(f"babilong_{task}" for task in sorted(GENERATORS)), "copying")


def run_eval_task(
    model: torch.nn.Module,
    tokenizer,
    task: str,
    lengths: Sequence[int],
    *,
    num_trials: int,
    segment_length: int,
    attention_state: str = "window",
    attention_window: int | None = None,
) -> list[dict]:
    """Accuracy of `model` on `task` per prompt length: `[{"length", "accuracy", "trials"}]` (passkey: the mean over
    `PASSKEY_DEPTHS`, `trials` counting every depth's; copying: the per-token copy accuracy)."""
    attention = {"attention_state": attention_state, "attention_window": attention_window}
    if task == "passkey":
        cells = passkey_retrieval(
            model, tokenizer, list(lengths), list(PASSKEY_DEPTHS), num_trials=num_trials,
            segment_length=segment_length, **attention,
        )  # fmt: skip
        return [
            {
                "length": length,
                "accuracy": sum(c["accuracy"] for c in cells if c["length"] == length) / len(PASSKEY_DEPTHS),
                "trials": num_trials * len(PASSKEY_DEPTHS),
            }
            for length in lengths
        ]
    if task == "copying":
        rows = copying_accuracy(
            model, tokenizer, list(lengths), num_trials=num_trials, segment_length=segment_length, **attention
        )
        return [{"length": r["length"], "accuracy": r["token_accuracy"], "trials": r["trials"]} for r in rows]
    if task not in EVAL_TASKS:
        raise ValueError(f"Unknown eval task {task!r}: one of {list(EVAL_TASKS)}.")
    rows = babilong_accuracy(
        model, tokenizer, task.removeprefix("babilong_"), list(lengths), num_samples=num_trials,
        segment_length=segment_length, **attention,
    )  # fmt: skip
    return [{"length": r["length"], "accuracy": r["accuracy"], "trials": r["samples"]} for r in rows]


def task_metrics(task: str, rows: list[dict], prefix: str) -> dict[str, float]:
    """`<prefix>_<task>_acc_<length>` per length and `<prefix>_<task>_acc`, their mean."""
    metrics = {f"{prefix}_{task}_acc_{r['length']}": r["accuracy"] for r in rows}
    metrics[f"{prefix}_{task}_acc"] = sum(r["accuracy"] for r in rows) / len(rows)
    return metrics


def task_tables(results: dict[str, list[dict]]) -> str:
    """Markdown, one table per task: accuracy by prompt length (the model card's)."""
    tables = []
    for task, rows in results.items():
        what = "per-token copy accuracy by sequence length" if task == "copying" else "accuracy by prompt length"
        lines = [f"{task} {what} (tokens):", "", "| length | accuracy | prompts |", "|---|---|---|"]
        lines += [f"| {r['length']} | {r['accuracy']:.2f} | {r['trials']} |" for r in rows]
        tables.append("\n".join(lines))
    return "\n\n".join(tables)
