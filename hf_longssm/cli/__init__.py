"""The `hf-longssm` command: `hf-longssm <command> [options]`, also `python -m hf_longssm <command> ...`.

Every command is a module of this package with a `main(argv)`; `COMMANDS` is the one map from names to modules.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

from ..training.output_lock import OutputDirInUseError
from . import convert, demo, eval, extend, lm_eval, plan, push, train


COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "eval": eval,
    "extend": extend,
    "demo": demo,
    "convert": convert,
    "lm-eval": lm_eval,
    "push": push,
    "plan": plan,
}
# Other names accepted for a command (`hf-longssm evaluate` is older than `hf-longssm eval`).
ALIASES: dict[str, str] = {"evaluate": "eval"}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: it only lists the commands; each command parses its own options."""
    parser = argparse.ArgumentParser(
        prog="hf-longssm",
        description="Carried-state post-training and long-context evaluation for Mamba-family models.",
        epilog="`hf-longssm <command> --help` lists a command's options.",
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    aliases = {name: [a for a, target in ALIASES.items() if target == name] for name in COMMANDS}
    for name, module in COMMANDS.items():
        commands.add_parser(name, aliases=aliases[name], help=module.__doc__.splitlines()[0], add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run `hf-longssm <command> ...` (`argv` defaults to the command line); no command prints the usage, exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = ALIASES.get(argv[0], argv[0]) if argv else None
    if name not in COMMANDS:
        parser = build_parser()
        parser.parse_args(argv[:1])  # `--help` (exit 0), an unknown command (exit 2)
        parser.print_usage(sys.stderr)
        parser.exit(2, f"{parser.prog}: error: give a command: {', '.join(COMMANDS)}\n")
    # The console script exits with what `main` returns: None, i.e. status 0. The errors hf_longssm raises for bad
    # input say what to do: printed as a usage error, without a traceback (HF_LONGSSM_TRACEBACK=1 shows it).
    try:
        COMMANDS[name].main(argv[1:])
    except (ValueError, OSError, OutputDirInUseError) as err:  # OSError: missing files, the network
        if os.environ.get("HF_LONGSSM_TRACEBACK") == "1":
            raise
        sys.exit(f"hf-longssm {name}: error: {err}")
