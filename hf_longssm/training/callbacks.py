"""`EvalPlotCallback`: the perplexity-by-position figure of every evaluation while post-training runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import TrainerCallback

from ..evaluation.plots import plot_eval_history


_BUCKET = re.compile(r"^eval_ppl_(\d+)_(\d+)$")


class EvalPlotCallback(TrainerCallback):
    """After every evaluation (main process), append its buckets to `output_dir/eval/history.json` and redraw
    `output_dir/eval/perplexity_by_position.png`: one line per evaluation step, log-x, training context marked.

    Added by `StatePassingTrainer` when there is an `eval_dataset` and `eval_plots=True`.
    """

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics:
            return
        buckets = [
            {"start": int(m.group(1)), "end": int(m.group(2)), "perplexity": value}
            for key, value in metrics.items()
            if (m := _BUCKET.match(key))
        ]
        if not buckets:
            return
        folder = Path(args.output_dir) / "eval"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "history.json"
        history = json.loads(path.read_text()) if path.is_file() else []
        # A resumed run evaluates the same step again: the newer result replaces the older one.
        history = [h for h in history if h["step"] != state.global_step]
        entry = {"step": state.global_step, "buckets": sorted(buckets, key=lambda b: b["start"])}
        if "eval_far_near_ratio" in metrics:
            entry["far_near_ratio"] = metrics["eval_far_near_ratio"]
        history = sorted([*history, entry], key=lambda h: h["step"])
        path.write_text(json.dumps(history, indent=2))
        plot_eval_history(history, args.segment_length, folder / "perplexity_by_position.png")
