"""`hf-longssm` entry point: `hf-longssm eval ...` is `python -m hf_longssm.evaluate ...`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("eval", "evaluate"):
        print("usage: hf-longssm eval --model <id or path> --task position_ppl|passkey|effrem|state_norms ...")
        raise SystemExit(2)
    from .evaluate import main as evaluate_main

    evaluate_main(argv[1:])
