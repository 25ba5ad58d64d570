"""Write a transformers-format copy of a checkpoint (e.g. the papers' mamba_ssm-format state-spaces/mamba2-*).

    hf-longssm convert SRC DST [--tokenizer NAME] [--dtype float32|bfloat16|float16|auto] [--overwrite]

SRC is a Hub id or a folder in transformers or mamba_ssm format (`hf_longssm.loading.load_model`); DST gets
`config.json` and `model.safetensors`, and the tokenizer's files with `--tokenizer` (mamba_ssm checkpoints ship none:
their tokenizer is `EleutherAI/gpt-neox-20b`, also in `state-spaces/mamba-130m-hf`). `AutoModelForCausalLM
.from_pretrained(DST)` then loads it without hf_longssm. A DST that exists and is not empty is refused unless
`--overwrite`; nothing is written before the checkpoint has loaded.
"""

from __future__ import annotations

import argparse
import sys

from ..loading import DTYPES, convert_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-longssm convert", description=__doc__.splitlines()[0])
    p.add_argument("src", metavar="SRC", help="Hub id or folder (transformers or mamba_ssm format)")
    p.add_argument("dst", metavar="DST", help="folder to write (must not exist or be empty, unless --overwrite)")
    p.add_argument("--tokenizer", default=None, help="'byte', a Hub id or a folder: its tokenizer is saved too")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="dtype written (auto: the checkpoint's)")
    p.add_argument("--revision", default=None, help="revision of a Hub SRC")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty DST (same-named files replaced)")
    return p


def main(argv: list[str] | None = None) -> None:
    """`hf-longssm convert SRC DST [...]` (`argv` defaults to the command line); errors exit with status 1."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    kwargs = {"revision": args.revision} if args.revision else {}
    try:
        dst = convert_checkpoint(
            args.src, args.dst, tokenizer=args.tokenizer, dtype=args.dtype, overwrite=args.overwrite, **kwargs
        )
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"Wrote {dst} (transformers format): AutoModelForCausalLM.from_pretrained({str(dst)!r})")
