"""Upload a finished run's folder to the Hub: what `hf-longssm train` pushes at its end, retried by hand.

    hf-longssm push outputs/mamba2-130m-sp [--repo_id me/mamba2-130m-sp] [--private] [--base_model_id ID]

Uploads the weights (or LoRA adapter), tokenizer, card, results JSON and plots (`hub.UPLOAD_PATTERNS`); never
checkpoints, optimizer states or `training_args.bin`. The token comes from `--token`, `HF_TOKEN` or `hf auth login`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..hub import push_folder_to_hub
from ..training.checkpoints import FINISHED_FILE
from ..training.output_lock import hold_output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-longssm push", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="the folder of a finished `hf-longssm train` run")
    parser.add_argument("--repo_id", help="the Hub repository (default: the folder's name, in your namespace)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", help="a Hub token with write access (default: HF_TOKEN or the stored login)")
    parser.add_argument("--base_model_id", help="the base model's Hub id, for a LoRA adapter trained from a folder")
    parser.add_argument("--commit_message", default="Post-trained with hf_longssm")
    return parser


def main(argv: list[str] | None = None) -> str:
    """`hf-longssm push OUTPUT_DIR [...]`; prints and returns the commit URL."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    folder = Path(args.output_dir)
    if not (folder / FINISHED_FILE).is_file():
        raise SystemExit(
            f"hf-longssm push: {folder} holds no finished run ({FINISHED_FILE} is missing). Finish it first: rerun "
            "the same `hf-longssm train` command, which resumes from its last checkpoint."
        )
    with hold_output_dir(folder):  # not while a run writes into it
        url = push_folder_to_hub(
            folder,
            args.repo_id or folder.resolve().name,
            private=args.private or None,
            token=args.token,
            commit_message=args.commit_message,
            base_model_id=args.base_model_id,
        )
    print(url)
    return url
