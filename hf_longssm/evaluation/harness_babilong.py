"""lm-eval's own BABILong tasks (`babilong`, `babilong_longctx`, `babilong_qa1` ... `babilong_qa20`) from a local copy
of their Hub dataset, at every length it offers.

lm-eval 0.4.13 reads RMT-team/babilong-1k-samples in its own code, as `datasets.load_dataset(<repo id>, name=<length>,
split=<qa>)`: qa1-qa10 through `tasks/babilong/common_utils.load_dataset` (the length is the task metadata
`max_seq_lengths`: 0k, 1k, 2k, 4k, 8k, 16k, 32k, 64k or 128k, one per run), qa11-qa20 through the task's own
`dataset_path` with `dataset_name: 0k`. No task option points either elsewhere, and offline `datasets` does not read a
Hub-cache snapshot of a dataset repository. So `local_babilong` redirects those calls, while it is open and for that
repository id only, to a folder with the repository's layout: its README.md, whose `configs:` map each length to its
`<length>/qa<N>-*.parquet` files (columns `input`, `question`, `target`), which `datasets` reads as it would the Hub's.
The folder is given, or found in the Hub cache, so that a dataset downloaded once
(`hf download --repo-type dataset RMT-team/babilong-1k-samples`) runs offline with no option.

The dataset has qa1-qa5 at every length and qa6-qa20 at 0k only, and lm-eval reads qa11-qa20 at 0k whatever the length
asked: `babilong_problems` names what a length cannot run, so that no 0k number is reported as a longer one.
`LongSSMLM` reads the prompts, up to 128k tokens, whole (segmented prefill, state carried).

Example:
    >>> import lm_eval
    >>> from hf_longssm.evaluation.harness import LongSSMLM, babilong_task_manager, local_babilong
    >>> lm = LongSSMLM("outputs/demo/state_passing", segment_length=4096)
    >>> with local_babilong(lengths=["16k"]):  # the Hub cache's copy; or local_babilong("path/to/copy", ...)
    ...     results = lm_eval.simple_evaluate(
    ...         model=lm, tasks=["babilong_longctx"], task_manager=babilong_task_manager("16k"), limit=20
    ...     )
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import lm_eval.tasks
import yaml
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.repocard import metadata_load
from lm_eval.tasks import TaskManager


# The repository lm-eval's BABILong tasks read (1000 samples per task and length; lm-eval's README names
# RMT-team/babilong, 100 samples up to 10M tokens, as an edit of its code: a copy of that one loads the same way).
BABILONG_REPO = "RMT-team/babilong-1k-samples"
BABILONG_DIR = Path(lm_eval.tasks.__file__).resolve().parent / "babilong"


class _TaskYamlLoader(yaml.SafeLoader):
    """lm-eval's task YAMLs with `!function` kept as text: only what a task reads is needed, not its functions."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _task_yaml(path: Path) -> dict[str, Any]:
    config = yaml.load(path.read_text(), Loader=_TaskYamlLoader)  # noqa: S506 (a SafeLoader with one text tag)
    included = config.pop("include", None)
    if included is None:
        return config
    return _task_yaml(path.parent / included) | config  # the task's own keys win, as in lm-eval


@functools.cache
def _babilong_yamls() -> dict[str, dict[str, Any]]:
    """Every task and group of lm-eval's BABILong folder by name."""
    configs = {}
    for path in sorted(BABILONG_DIR.glob("*.yaml")):
        config = _task_yaml(path)
        configs[config.get("group") or config["task"]] = config
    return configs


def babilong_tasks() -> list[str]:
    """lm-eval's BABILong task and group names (`babilong`, `babilong_longctx`, `babilong_qa1` ... `babilong_qa20`)."""
    return list(_babilong_yamls())


def _members(name: str) -> list[str]:
    config = _babilong_yamls()[name]
    return [member for task in config["task"] for member in _members(task)] if "group" in config else [name]


def _reads(task: str, length: str) -> tuple[str, str]:
    """The dataset config (length) and split lm-eval's `task` reads when asked for `length`."""
    config = _babilong_yamls()[task]
    if "custom_dataset" in config:  # common_utils.load_dataset: the length from the metadata
        return length, config["dataset_kwargs"]["qa_split"]
    return config["dataset_name"], config["test_split"]


def babilong_length_tokens(length: str) -> float:
    """A BABILong length's nominal size, `4k` -> 4096, `1M` -> 1048576, for ordering lengths (another name: last)."""
    match = re.fullmatch(r"(\d+)([kKM])", length)
    if match is None:
        return float("inf")
    return int(match[1]) * (1024 if match[2] in "kK" else 1024**2)


def babilong_configs(folder: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """The lengths a copy declares, each with its splits and their file patterns (the README's `configs:`)."""
    card = metadata_load(Path(folder) / "README.md") or {}
    configs = {}
    for config in card.get("configs") or []:
        data_files = config.get("data_files") or []
        if isinstance(data_files, (str, dict)):
            data_files = [data_files]
        splits: dict[str, list[str]] = {}
        for entry in data_files:
            split, patterns = (entry["split"], entry["path"]) if isinstance(entry, dict) else ("train", entry)
            splits.setdefault(split, []).extend([patterns] if isinstance(patterns, str) else patterns)
        configs[config["config_name"]] = splits
    return configs


def babilong_lengths(folder: str | os.PathLike) -> list[str]:
    """The lengths whose files are all in the copy, shortest first (a partial download holds some)."""
    folder = Path(folder)
    present = [
        length
        for length, splits in babilong_configs(folder).items()
        if all(any(folder.glob(pattern)) for patterns in splits.values() for pattern in patterns)
    ]
    return sorted(present, key=babilong_length_tokens)


def _download_hint(repo_id: str, lengths: Sequence[str] = ()) -> str:
    patterns = ["README.md", *(f"{length}/*" for length in lengths)] if lengths else []
    some = "".join(f" --include '{pattern}'" for pattern in patterns)  # hf's --include takes one pattern per flag
    return f"hf download --repo-type dataset {repo_id}{some}"


def babilong_copy(
    path: str | os.PathLike | None = None,
    lengths: Sequence[str] = (),
    *,
    repo_id: str = BABILONG_REPO,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The folder that holds the BABILong dataset: `path`, else the Hub cache's snapshot of `repo_id`.

    Args:
        path (`str`, *optional*): a copy of the dataset repository (its README.md and parquet files, as downloaded
            with `hf download --repo-type dataset RMT-team/babilong-1k-samples --local-dir DIR`).
        lengths (`list[str]`, *optional*): lengths the run needs (`"0k"`, `"16k"`, ...); each must be in the copy.
        repo_id (`str`, *optional*, defaults to `"RMT-team/babilong-1k-samples"`): the repository lm-eval reads.
        cache_dir (`str`, *optional*): the Hub cache to look in (default: huggingface_hub's).

    Raises:
        FileNotFoundError: there is no copy, or it lacks a length; the message says what to download or pass.
    """
    if path is not None:
        folder = Path(path).expanduser()
        if not (folder / "README.md").is_file():
            raise FileNotFoundError(
                f"{folder} is not a copy of the dataset {repo_id}: it has no README.md (whose `configs:` name the "
                f"lengths and their files). Download one with `{_download_hint(repo_id)} --local-dir {folder}`."
            )
    else:
        try:
            folder = Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True, cache_dir=cache_dir))
        except LocalEntryNotFoundError:
            raise FileNotFoundError(
                f"lm-eval's babilong tasks read the Hub dataset {repo_id}, which is not in the Hub cache (and "
                f"`datasets` would not read it from there offline). Download it once with `{_download_hint(repo_id)}` "
                f"(or only the lengths you need: `{_download_hint(repo_id, lengths or ['0k'])}`), after which it is "
                "found offline, or pass the folder of a copy: `hf-longssm lm-eval --babilong_path DIR`, "
                "`local_babilong(DIR)`."
            ) from None
        if not (folder / "README.md").is_file():
            raise FileNotFoundError(
                f"The Hub cache's copy of {repo_id} ({folder}) has no README.md, which names its lengths: "
                f"`{_download_hint(repo_id, lengths)}`."
            )
    present = babilong_lengths(folder)
    missing = [length for length in lengths if length not in present]
    if missing:
        declared = babilong_configs(folder)
        unknown = [length for length in missing if length not in declared]
        if unknown:
            raise FileNotFoundError(
                f"{repo_id} has no length {', '.join(unknown)}; it declares {', '.join(declared) or 'none'} "
                f"(in {folder / 'README.md'})."
            )
        raise FileNotFoundError(
            f"The copy of {repo_id} in {folder} lacks the files of {', '.join(missing)} (it holds "
            f"{', '.join(present) or 'none'}): `{_download_hint(repo_id, missing)}"
            + (f" --local-dir {folder}`." if path is not None else "`.")
        )
    return folder


@contextmanager
def local_babilong(
    path: str | os.PathLike | None = None,
    lengths: Sequence[str] = (),
    *,
    repo_id: str = BABILONG_REPO,
    cache_dir: str | os.PathLike | None = None,
) -> Iterator[Path]:
    """While open, lm-eval's BABILong tasks read `repo_id` from a local copy (`babilong_copy(path, lengths)`).

    `datasets.load_dataset` is what both of lm-eval's call sites look up at call time (`common_utils` and
    `ConfigurableTask.download`), so it is wrapped there: a call for `repo_id` reads the copy's folder instead, every
    other call is passed on unchanged, and the original is restored on exit.

    Yields:
        `Path`: the copy's folder.
    """
    folder = babilong_copy(path, lengths, repo_id=repo_id, cache_dir=cache_dir)
    hub_load_dataset = datasets.load_dataset

    @functools.wraps(hub_load_dataset)
    def load_dataset(path: str, *args: Any, **kwargs: Any) -> Any:
        return hub_load_dataset(str(folder) if path == repo_id else path, *args, **kwargs)

    datasets.load_dataset = load_dataset
    try:
        yield folder
    finally:
        datasets.load_dataset = hub_load_dataset


def babilong_problems(tasks: Sequence[str], length: str, folder: str | os.PathLike) -> dict[str, str]:
    """BABILong tasks (or groups) of `tasks` that cannot run at `length` from the copy in `folder`, and why.

    A task cannot when lm-eval reads it at another length whatever is asked (qa11-qa20: `dataset_name: 0k`), or when
    the copy has no such split at that length (the dataset's qa6-qa20 exist at 0k only); a group cannot when one of
    its tasks cannot.
    """
    configs = babilong_configs(folder)
    known = _babilong_yamls()
    problems = {}
    for name in tasks:
        if name not in known:
            continue
        why = {}
        for task in _members(name):
            config, split = _reads(task, length)
            if config != length:
                why[task] = f"lm-eval reads it at {config} whatever the length asked (its dataset_name)"
            elif split not in configs.get(length, {}):
                why[task] = f"the copy has no {split} at {length} (the Hub's: qa1-qa5 at every length, qa6-qa20 at 0k)"
        if name in why:
            problems[name] = why[name]
        elif why:
            hint = "" if name == "babilong_longctx" else "; babilong_longctx holds qa1-qa5, which run at every length"
            problems[name] = f"its tasks {', '.join(why)} cannot: {next(iter(why.values()))}{hint}"
    return problems


def babilong_task_manager(length: str, include_path: Sequence[str | os.PathLike] = ()) -> TaskManager:
    """An lm-eval `TaskManager` that knows lm-eval's BABILong tasks (0.1 s; all of lm-eval's: ~10 s) at `length`.

    Args:
        length (`str`): the dataset config, `"0k"`, `"1k"`, ..., `"128k"` (the tasks' `max_seq_lengths`: lm-eval
            reads one length per run).
        include_path (`list[str]`, *optional*): more task folders.
    """
    paths = [str(BABILONG_DIR), *map(str, include_path)]
    return TaskManager(include_path=paths, include_defaults=False, metadata={"max_seq_lengths": length})
