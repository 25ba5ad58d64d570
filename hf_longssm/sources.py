"""Where documents come from: the one map of data sources every entry point reads (litgpt's `data/` in small).

A source turns a split name into documents: rows with a `text` (or `input_ids`) field, as a `datasets` dataset.

| name given | source |
|---|---|
| `hf_longssm/offline-shakespeare` | `OfflineCorpus`: 34 Shakespeare plays (`train`) and 4 held out (`held_out`) |
| `hf_longssm/copying` | `CopyingTask`: the synthetic copying task, byte-level, `config` = the segment length |
| `data_files` all ending in `.txt` | `TextFiles`: one document per file |
| other `data_files` (`.json`, `.jsonl`) | `JsonFiles`: one document per row |
| any other name | `HubDataset`: `datasets.load_dataset(name, config, split=..., streaming=...)` |

A new offline corpus is one entry in `OFFLINE_CORPORA`; a new kind of file is one class in `FILE_FORMATS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .corpus import load_offline_books
from .synthetic import copying_documents
from .tokenization import byte_tokenizer


class DataSource(ABC):
    """Documents by split.

    Attributes:
        eval_split (`str`): the split evaluation reads when none is given.
    """

    eval_split: ClassVar[str] = "test"

    @abstractmethod
    def load(self, split: str = "train", config: str | None = None, streaming: bool = False) -> Any:
        """The documents of `split` (a `datasets.Dataset`, or an `IterableDataset` when streaming)."""


@dataclass(frozen=True)
class OfflineCorpus(DataSource):
    """A corpus built on this machine with no Hub access (`hf_longssm.corpus`); `config` and `streaming` are unused."""

    name: str
    build: Callable[[], Any]  # -> datasets.DatasetDict
    eval_split: ClassVar[str] = "held_out"

    def load(self, split: str = "train", config: str | None = None, streaming: bool = False) -> Any:
        splits = self.build()
        if split not in splits:
            raise ValueError(f"{self.name} has the splits {sorted(splits)}; got split={split!r}.")
        return splits[split]


@dataclass(frozen=True)
class CopyingTask(DataSource):
    """The synthetic copying task (`hf_longssm.synthetic`), generated here: rows `{"input_ids", "labels"}` in the
    byte tokenizer's ids (train with `tokenizer_name_or_path: byte`), one segment of `config` tokens each (the
    training segment length as a string, e.g. `"64"`). Splits: `train` (`TRAIN_DOCUMENTS`, seed 0) and `held_out`
    (1,024, seed 1)."""

    name: str
    eval_split: ClassVar[str] = "held_out"
    SPLITS: ClassVar[dict[str, tuple[int, int]]] = {"train": (65536, 0), "held_out": (1024, 1)}  # (documents, seed)

    def load(self, split: str = "train", config: str | None = None, streaming: bool = False) -> Any:
        from datasets import Dataset

        if config is None or not str(config).isdigit():
            raise ValueError(
                f"{self.name} needs dataset_config: the training segment length its documents fill, e.g. "
                f'dataset_config: "64" with segment_length: 64; got {config!r}.'
            )
        if split not in self.SPLITS:
            raise ValueError(f"{self.name} has the splits {sorted(self.SPLITS)}; got split={split!r}.")
        num_documents, seed = self.SPLITS[split]
        return Dataset.from_list(copying_documents(byte_tokenizer(), int(config), num_documents, seed))


@dataclass(frozen=True)
class TextFiles(DataSource):
    """Local files, each one whole document: its bytes decoded as UTF-8, nothing normalised (`\r\n` stays, so a
    byte-level model sees the file's bytes); one split, whatever `split` says. (`datasets`' own text loader turns
    `\r\n` into `\n`.)"""

    files: tuple[str, ...]

    def load(self, split: str = "train", config: str | None = None, streaming: bool = False) -> Any:
        from datasets import Dataset

        texts = []
        for path in self.files:
            try:
                texts.append(Path(path).read_bytes().decode("utf-8"))
            except UnicodeDecodeError as err:
                # Refused rather than decoded with replacement characters: the model would learn them as text.
                raise ValueError(
                    f"{path} is not UTF-8 text. Convert it first, e.g. `iconv -f <its encoding, e.g. latin1 or "
                    f"utf-16> -t utf-8 {path} > converted.txt`."
                ) from err
        return Dataset.from_dict({"text": texts})


@dataclass(frozen=True)
class JsonFiles(DataSource):
    """Local `.json` / `.jsonl` files, one document per row (a `text` or `input_ids` field); one split."""

    files: tuple[str, ...]

    def load(self, split: str = "train", config: str | None = None, streaming: bool = False) -> Any:
        from datasets import load_dataset

        return load_dataset("json", data_files=list(self.files), split="train", streaming=streaming)


@dataclass(frozen=True)
class HubDataset(DataSource):
    """A dataset on the Hugging Face Hub (or any name `datasets.load_dataset` takes)."""

    name: str

    def load(self, split: str = "train", config: str | None = None, streaming: bool = False) -> Any:
        from datasets import load_dataset

        return load_dataset(self.name, config, split=split, streaming=streaming)


OFFLINE_SHAKESPEARE = "hf_longssm/offline-shakespeare"
COPYING = "hf_longssm/copying"
OFFLINE_CORPORA: dict[str, DataSource] = {
    OFFLINE_SHAKESPEARE: OfflineCorpus(OFFLINE_SHAKESPEARE, load_offline_books),
    COPYING: CopyingTask(COPYING),
}
FILE_FORMATS: dict[str, type[DataSource]] = {"text": TextFiles, "json": JsonFiles}


def is_offline(name: str | None) -> bool:
    """Whether `name` is one of hf_longssm's offline corpora (not a Hub dataset: no card link, no download)."""
    return name in OFFLINE_CORPORA


def get_source(
    dataset_name: str | None = None, data_files: Sequence[str] | None = None, file_format: str | None = None
) -> DataSource:
    """The source for a dataset name or a list of local files (`data_files` wins when both are given).

    Args:
        dataset_name (`str`, *optional*): an offline corpus name (`OFFLINE_CORPORA`) or a Hub dataset id.
        data_files (`Sequence[str]`, *optional*): local files.
        file_format (`str`, *optional*): `"text"` (one document per file) or `"json"` (one per row); by default
            `"text"` when every file ends in `.txt`, else `"json"`.
    """
    if isinstance(data_files, (str, Path)):
        data_files = [data_files]  # one file given as a string (YAML `data_files: notes.txt`)
    if data_files:
        files = tuple(str(f) for f in data_files)
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"data_files not found: {missing}.")
        if file_format is None:
            kinds = {"text" if f.endswith(".txt") else "json" if f.endswith((".json", ".jsonl")) else f for f in files}
            if len(kinds) != 1 or not kinds <= set(FILE_FORMATS):
                raise ValueError(
                    f"data_files mix or use unknown formats ({sorted(kinds)}): give only .txt files (one document "
                    "each) or only .json/.jsonl files (one document per row), in separate runs or a merged file."
                )
            file_format = kinds.pop()
        if file_format not in FILE_FORMATS:
            raise ValueError(f"Unknown file_format {file_format!r}; choose from {sorted(FILE_FORMATS)}.")
        return FILE_FORMATS[file_format](files)
    if dataset_name is None:
        raise ValueError(f"Give dataset_name (a Hub id or one of {sorted(OFFLINE_CORPORA)}) or data_files.")
    if is_offline(dataset_name):
        return OFFLINE_CORPORA[dataset_name]
    if dataset_name.startswith((".", "/", "~")) and not Path(dataset_name).expanduser().exists():
        raise FileNotFoundError(f"dataset_name {dataset_name!r} looks like a local path and was not found.")
    return HubDataset(dataset_name)


def load_documents(
    dataset_name: str | None = None,
    data_files: Sequence[str] | None = None,
    split: str = "train",
    config: str | None = None,
    streaming: bool = False,
    file_format: str | None = None,
) -> Any:
    """The documents of one split of a dataset or of local files: `get_source(...).load(split, config, streaming)`.

    Args:
        dataset_name (`str`, *optional*): `"hf_longssm/offline-shakespeare"` (splits `train` and `held_out`) or a
            Hub dataset id.
        data_files (`Sequence[str]`, *optional*): local `.txt` files (one document each) or `.json` / `.jsonl` files
            (one document per row); used instead of `dataset_name`.
        split (`str`, *optional*, defaults to `"train"`): the split of a dataset (local files have one).
        config (`str`, *optional*): a Hub dataset's config name.
        streaming (`bool`, *optional*, defaults to `False`): stream a Hub dataset or JSON files.
        file_format (`str`, *optional*): see `get_source`.

    Returns:
        a `datasets.Dataset` (an `IterableDataset` when streaming) of rows with a `text` or `input_ids` field.
    """
    return get_source(dataset_name, data_files, file_format).load(split=split, config=config, streaming=streaming)
