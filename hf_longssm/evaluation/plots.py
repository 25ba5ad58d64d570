"""Figures of the measurements: perplexity by position (per model, and per evaluation step while training),
passkey heatmaps, effective remembrance, state norms. matplotlib is imported when a figure is drawn."""

from __future__ import annotations

import math
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bucket_midpoints(buckets: list[dict]) -> list[float]:
    # Geometric middle of each log-spaced [start, end) bucket.
    return [math.sqrt(max(b["start"], 1) * b["end"]) for b in buckets]


def _mark_context(ax, train_context: int | None) -> None:
    if train_context:
        ax.axvline(train_context, color="gray", linestyle="--", label=f"training context ({train_context} tokens)")


def plot_eval(task: str, results: dict[str, dict], path: Path, train_context: int | None = None) -> None:
    """The figure of one `hf-longssm eval` task, every model of `results` in it (a heatmap per model for passkey).

    Args:
        task (`str`): `position_ppl`, `passkey`, `effrem`, `state_norms`, `babilong_qa1` ... `babilong_qa5` or
            `copying`.
        results (`dict[str, dict]`): per model id, what `cli.eval.run_task` returned.
        train_context (`int`, *optional*): the models' training context, marked on position axes.
    """
    plt = _pyplot()
    if task.startswith("babilong_"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, res in results.items():
            cells = res["cells"]
            ax.plot([c["length"] for c in cells], [c["accuracy"] for c in cells], marker="o", label=Path(name).name)
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("accuracy (exact match on the answer word)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    if task == "copying":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (name, res) in enumerate(results.items()):
            cells, color, label = res["cells"], f"C{i}", "/".join(Path(name).parts[-2:])
            lengths = [c["length"] for c in cells]
            ax.plot(lengths, [c["token_accuracy"] for c in cells], marker="o", color=color, label=label)
            ax.plot(lengths, [c["exact_match"] for c in cells], marker="x", linestyle=":", color=color)
        if train_context:
            ax.axvline(train_context, color="gray", linestyle="--", label=f"training length ({train_context} tokens)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("sequence length (tokens; the copy is half of it)")
        ax.set_ylabel("copy accuracy (solid: per token; dotted: whole copy)")
        ax.set_title("Synthetic copying past the training length")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
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
            for row, values in enumerate(grid):
                for col, value in enumerate(values):
                    ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize="small")
            ax.set_xticks(range(len(lengths)), lengths)
            ax.set_yticks(range(len(depths)), depths)
            ax.set_xlabel("prompt length (tokens)")
            ax.set_ylabel("key depth (0 = start, 1 = end)")
            ax.set_title(Path(name).name)
        fig.colorbar(im, ax=axes[0].tolist(), label="accuracy (exact match)")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for i, (name, res) in enumerate(results.items()):
        color, label = colors[i % len(colors)], Path(name).name
        if task == "position_ppl":
            xs = _bucket_midpoints(res["buckets"])
            ax.plot(xs, [b["perplexity"] for b in res["buckets"]], marker="o", color=color, label=label)
            if all("perplexity_low" in b for b in res["buckets"]):
                low = [b["perplexity_low"] for b in res["buckets"]]
                ax.fill_between(xs, low, [b["perplexity_high"] for b in res["buckets"]], color=color, alpha=0.2)
            ax.set_ylabel("perplexity (band: 95% over sequences)")
        elif task == "state_norms":
            for layer in range(len(res["norms"][0])):
                values = [n[layer] for n in res["norms"]]
                style = styles[layer % len(styles)]
                ax.plot(res["positions"], values, linestyle=style, color=color, label=f"{label}, layer {layer}")
            ax.set_ylabel("SSM state norm (L2, mean over sequences)")
        else:
            ts = sorted(int(t) for t in res["effrem"])
            ax.plot(ts, [res["effrem"][str(t)] for t in ts], marker="o", color=color, label=label)
            ax.set_ylabel(f"EffRem_T(t), T = {res['T']} tokens")
    if task == "effrem":
        ax.set_xscale("symlog", linthresh=1)  # t = 0 (the whole context: EffRem = 0) stays on the axis
        ax.set_xlabel("t: tokens dropped from the start of the context (0 = none)")
    else:
        ax.set_xscale("log")
        _mark_context(ax, train_context)
        ax.set_xlabel("token position (tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_demo(results: dict[str, dict], train_context: int, path: Path) -> None:
    """The demo's figure: perplexity by position (left) and what the long context does, in bits/byte (right).

    Args:
        results (`dict[str, dict]`): per model, `perplexity` buckets (`start`, `end`, `perplexity`) and
            `context_gain_bits` buckets (`start`, `end`, `bits_per_byte`).
        train_context (`int`): the training context T, drawn as a vertical line.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res in results.items():
        mids = _bucket_midpoints(res["perplexity"])
        left.plot(mids, [b["perplexity"] for b in res["perplexity"]], marker="o", label=name)
        right.plot(mids, [b["bits_per_byte"] for b in res["context_gain_bits"]], marker="o", label=name)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.axvline(train_context, color="gray", linestyle="--", label=f"training context T={train_context}")
        ax.set_xlabel("token position (bytes)")
        ax.grid(alpha=0.3)
    right.axhline(0, color="black", linewidth=0.8)
    left.set_yscale("log")  # the base model climbs by an order of magnitude: a log axis keeps the others readable
    left.set_ylabel("perplexity (same held-out bytes for every model)")
    right.set_ylabel("bits/byte: carried state - state restarted T/2..T back")
    left.set_title("Perplexity by position")
    right.set_title("What the long context does (> 0: it hurts)")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_eval_history(history: list[dict], train_context: int, path: Path) -> None:
    """Perplexity by position after every evaluation of a training run, one line per evaluation step.

    Args:
        history (`list[dict]`): per evaluation, `step` and `buckets` (`start`, `end`, `perplexity`).
        train_context (`int`): the training segment length, drawn as a vertical line.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("viridis")
    for i, entry in enumerate(history):
        mids = _bucket_midpoints(entry["buckets"])
        color = colors(i / max(len(history) - 1, 1))
        ax.plot(
            mids, [b["perplexity"] for b in entry["buckets"]], marker="o", color=color, label=f"step {entry['step']}"
        )
    ax.axvline(train_context, color="gray", linestyle="--", label=f"training context ({train_context} tokens)")
    ax.set_xscale("log")
    ax.set_xlabel("token position (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity by position during post-training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
