"""Extend a model's context without training: MambaExtend, LongMamba or a uniform Δ scale, calibrated and saved.

    hf-longssm extend --method mamba_extend --model <id or path> --length 16384 --output_dir <folder>
    hf-longssm extend --method long_mamba --model <id or path> --train_length 2048 --length 16384 --output_dir <folder>

Reads calibration text from `--data` (default: the offline corpus's *training* plays; `hf-longssm eval` reads its
held-out plays), calibrates (`hf_longssm.extend`), and writes the model (its weights unchanged, the calibrated values
in `length_extension.safetensors`), its tokenizer and `extension.json` (settings, calibration time, command,
versions) to `--output_dir`, which must be new or empty. `hf-longssm eval`, `hl.load_model` and the lm-eval adapter
read the folder like any other model, extension included.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from .. import extend
from ..loading import load_model, resolve_tokenizer
from ..sources import OFFLINE_SHAKESPEARE
from ..versions import package_versions
from .eval import RESULT_PACKAGES, data_identity, eval_source, positive_int
from .results import write_json


METHODS = ("mamba_extend", "long_mamba", "delta_scale")
# The papers' calibration sets: MambaExtend 20 samples at the target length, LongMamba 100 of the training length.
DEFAULT_SAMPLES = {"mamba_extend": 20, "long_mamba": 100, "delta_scale": 0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-longssm extend", description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--model", required=True, help="Hub id or local path")
    p.add_argument("--length", type=positive_int, required=True, help="the target length to extend to (tokens)")
    p.add_argument("--output_dir", required=True, help="new or empty folder for the extended model")
    p.add_argument(
        "--train_length",
        type=positive_int,
        default=None,
        help="the model's training context (long_mamba, delta_scale)",
    )
    p.add_argument("--tokenizer", default=None, help="'byte', a Hub id or path (default: the model's)")
    p.add_argument(
        "--data",
        nargs="+",
        default=[OFFLINE_SHAKESPEARE],
        help=f"calibration text: text files, a Hub dataset id, or {OFFLINE_SHAKESPEARE}; never the evaluation text",
    )
    p.add_argument("--split", default="train", help="split of the dataset (default: train)")
    p.add_argument(
        "--num_samples", type=positive_int, default=None, help="calibration samples (default: mamba_extend 20, "
        "long_mamba 100, the papers')",
    )  # fmt: skip
    p.add_argument("--calibration", choices=("spsa", "backprop"), default="spsa", help="mamba_extend's optimiser")
    p.add_argument("--iterations", type=positive_int, default=None, help="mamba_extend: SPSA 50, backprop 20")
    p.add_argument("--learning_rate", type=float, default=None, help="mamba_extend: SPSA's a (1e-3) or Adam's (5e-2)")
    p.add_argument("--scale", type=float, default=None, help="delta_scale: the scale (default train/target length)")
    p.add_argument("--c", type=float, default=None, help="mamba_extend: SPSA's c (0.1); long_mamba: channel c (5e-2)")
    p.add_argument("--b", type=float, default=1.0, help="long_mamba: threshold multiplier")
    p.add_argument("--clamp_top", type=float, default=0.15, help="long_mamba: Δ clamp quantile")
    p.add_argument("--segment_length", type=positive_int, default=4096)
    p.add_argument("--batch_size", type=positive_int, default=1, help="calibration samples per forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def calibration_rows(documents, tokenizer, length: int, num_samples: int) -> torch.LongTensor:
    """`num_samples` rows of `length` tokens, cut one after another from the documents (several per document)."""
    rows = []
    for doc in documents:
        ids = doc["input_ids"] if "input_ids" in doc else tokenizer(doc["text"])["input_ids"]
        rows += [ids[i : i + length] for i in range(0, len(ids) - length + 1, length)]
        if len(rows) >= num_samples:
            return torch.tensor(rows[:num_samples], dtype=torch.long)
    raise ValueError(
        f"The calibration data holds {len(rows)} samples of {length} tokens; {num_samples} were asked for. Give more "
        "text (--data), or fewer samples (--num_samples)."
    )


def check_output_dir(output_dir: Path, model: str) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} is a file; give a folder for the extended model.")
    if output_dir.is_dir() and Path(model).is_dir() and output_dir.resolve() == Path(model).resolve():
        raise FileExistsError(f"{output_dir} is the model being extended; write the extended model elsewhere.")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new folder (nothing is overwritten).")


def main(argv: list[str] | None = None) -> Path:
    """Run `hf-longssm extend`; returns the output folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.method == "long_mamba" and args.train_length is None:
        parser.error("--method long_mamba needs --train_length (the context the model was trained at).")
    if args.method == "delta_scale" and args.scale is None and args.train_length is None:
        parser.error("--method delta_scale needs --scale or --train_length (scale = train_length / length).")
    out = Path(args.output_dir)
    check_output_dir(out, args.model)  # before any minute of calibration
    model = load_model(args.model, dtype=torch.float32).to(args.device).eval()
    tokenizer = resolve_tokenizer(args.tokenizer, args.model)
    num_samples = args.num_samples or DEFAULT_SAMPLES[args.method]
    ids = None
    if args.method != "delta_scale":
        documents = eval_source(args.data).load(split=args.split, streaming=True)
        sample_length = args.length if args.method == "mamba_extend" else args.train_length
        ids = calibration_rows(documents, tokenizer, sample_length, num_samples)
    if args.method == "mamba_extend":
        extend.mamba_extend(
            model, ids, target_length=args.length, method=args.calibration, iterations=args.iterations,
            segment_length=args.segment_length, batch_size=args.batch_size, c=0.1 if args.c is None else args.c,
            learning_rate=args.learning_rate, seed=args.seed, progress=True,
        )  # fmt: skip
    elif args.method == "long_mamba":
        extend.long_mamba(
            model, ids, train_length=args.train_length, target_length=args.length, b=args.b,
            c=5e-2 if args.c is None else args.c, clamp_top=args.clamp_top, batch_size=args.batch_size,
        )  # fmt: skip
    else:
        extend.delta_scale(model, args.scale, train_length=args.train_length, target_length=args.length)
    extension = extend.get_extension(model)
    # Where the calibration text came from: `hf-longssm eval` refuses to evaluate on the same data.
    extension.settings["calibration_data"] = data_identity(args.data, args.split) if ids is not None else None
    extend.install_extension(model, extension)  # the config entry with the data named
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "command": "hf-longssm extend " + shlex.join(argv),
        "model": args.model,
        "method": args.method,
        "settings": extension.settings,
        "versions": package_versions(RESULT_PACKAGES),
    }
    write_json(record, out / "extension.json")
    print(f"{args.method}: {extension.settings}\nwrote {out}")
    return out
