"""One call to evaluate a model far past its training context: `hl.evaluate(model_or_hub_id, tasks=[...])`.

    >>> import hf_longssm as hl
    >>> tasks = ["position_ppl", "passkey", "babilong_qa1", "copying"]
    >>> results = hl.evaluate("state-spaces/mamba-130m-hf", tasks=tasks, length=16384, lengths=[4096, 16384])
    >>> results["position_ppl"]["buckets"]            # perplexity per log-spaced position bucket
    >>> hl.evaluate(model, tasks=["passkey"], lengths=[4096, 16384], output_dir="outputs/eval")  # + JSON, plots

`python -m hf_longssm.evaluate ...` is the same command as `hf-longssm eval` (the options of
`hf-longssm eval --help`). This package and the function share the name `hf_longssm.evaluate`: the package is
callable, so `hl.evaluate(...)` and `hl.evaluate.evaluate(...)` are the same call.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import types
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..cli import eval as eval_command
from ..modeling import unwrap_model


def evaluate(
    model: str | os.PathLike | torch.nn.Module,
    tasks: Sequence[str] = ("position_ppl", "passkey"),
    *,
    output_dir: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, dict]:
    """Run `hf-longssm eval`'s tasks on one model and return their results.

    Args:
        model (`str`, `os.PathLike` or a loaded model): a Hub id (read from the Hub cache offline), a local folder,
            or a model already loaded (`hl.load_model`, `from_pretrained`); a loaded model's tokenizer is found from
            its `config._name_or_path` unless `tokenizer=` is given.
        tasks (`Sequence[str]`): any of `position_ppl`, `passkey`, `effrem`, `state_norms`, `babilong_qa1` ...
            `babilong_qa5` (BABILong's offline twin: accuracy per `lengths`, `num_trials` stories each), `copying`
            (synthetic copying: per-token and exact-match copy accuracy per `lengths`, `num_trials` examples each).
        output_dir (`str`, *optional*): also write `<task>.json` (with the command and versions) and the plots
            there, as `hf-longssm eval` does; nothing is written without it.
        **options: `hf-longssm eval`'s options by name: `data` (files, a dataset id, or the offline corpus, the
            default), `split`, `length`, `num_sequences`, `segment_length`, `tokenizer`, `lengths`, `depths`,
            `num_trials`, `attention_state`, `attention_window`, `T`, `ts`, `device`, ...

    Returns:
        `dict`: per task, the results `hf-longssm eval` writes for the model (e.g. `position_ppl`: `buckets` and
        `nll`; `passkey`: `cells`).
    """
    if isinstance(tasks, str) or not set(tasks := list(tasks)) <= set(eval_command.TASKS) or not tasks:
        raise ValueError(f"tasks must be a list of {list(eval_command.TASKS)}; got {tasks!r}.")
    loaded = None if isinstance(model, (str, os.PathLike)) else model
    name = str(model) if loaded is None else unwrap_model(loaded).config._name_or_path or "model"
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for task in tasks:
            argv = ["--model", name, "--task", task, "--output_dir", str(output_dir or scratch), *_flags(options)]
            try:
                path = eval_command.main(argv + ([] if output_dir else ["--no_plot"]), model=loaded)
            except SystemExit:  # argparse refused a value; its message is printed above
                raise ValueError(f"hf-longssm eval refused the options of task {task!r}: {argv[4:]}.") from None
            results[task] = json.loads(path.read_text())["results"][name]
    return results


def _flags(options: dict[str, Any]) -> list[str]:
    """`hf-longssm eval`'s command-line flags for keyword options (`lengths=[1, 2]` -> `--lengths 1 2`)."""
    known = {action.dest for action in eval_command.build_parser()._actions} - {"help", "model", "task", "output_dir"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"Unknown evaluation options {unknown}; hf-longssm eval takes {sorted(known)}.")
    flags = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        if value is True and key == "no_plot":
            flags.append(f"--{key}")
        elif isinstance(value, (str, os.PathLike, int, float)) and not isinstance(value, bool):
            flags += [f"--{key}", str(value)]
        elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
            flags += [f"--{key}", *map(str, value)]
        else:
            raise ValueError(f"Option {key}={value!r}: give a name, a number or a list of them.")
    return flags


class _CallableModule(types.ModuleType):
    """`hl.evaluate(...)` calls `evaluate(...)`: the package (`python -m hf_longssm.evaluate`) is the function too."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, dict]:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
