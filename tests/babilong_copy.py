"""A small copy of the Hub dataset RMT-team/babilong-1k-samples in the repository's layout, for lm-eval's own BABILong
tasks offline.

The layout is the repository's (written by `datasets.push_to_hub`): a README.md whose YAML header declares each length
as a config (`dataset_info` features `question`, `target`, `input`; `configs` with one `data_files` entry per qa split)
and `<length>/<qa>-00000-of-00001.parquet`. The rows are bAbI-style: facts hidden in filler text, a question, and a
one-word target, as in the real data; every question is unique in a copy, so a test can force an answer per row.

`offline_hub` takes the network away as a user without one sees it: the Hub and `datasets` offline (a call that
escaped the redirect fails at once), an empty Hub cache (returned), `datasets`' cache in the test's folder. A test
module makes it visible with `offline_hub = babilong_copy.offline_hub`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import constants


REPO_ID = "RMT-team/babilong-1k-samples"
FILLER = "The rain had stopped, and the long road to the village lay quiet under a grey and patient sky. "
PEOPLE = ["Mary", "John", "Sandra", "Daniel", "Julie", "Fred", "Bill", "Jeff", "Emily", "Yann"]
OBJECTS = ["football", "apple", "milk", "box", "key", "book", "pen", "ring", "cup", "hat"]
PLACES = ["bathroom", "hallway", "kitchen", "garden", "office", "bedroom"]


def babilong_row(split: str, index: int, length: int) -> dict[str, str]:
    """One row of `split` (qa1: where is a person; otherwise: where is an object), its input about `length` bytes."""
    place, other = PLACES[index % len(PLACES)], PLACES[(index + 1) % len(PLACES)]
    person = PEOPLE[index % len(PEOPLE)]
    if split == "qa1":
        facts = [f"{person} went to the {other}.", f"{person} moved to the {place}."]
        question = f"Where is {person}?"
    else:  # an object carried to its place; the split's number keeps questions unique across splits
        thing = f"{OBJECTS[index % len(OBJECTS)]} {split}"
        facts = [f"{person} got the {thing} there.", f"{person} travelled to the {place}."]
        question = f"Where is the {thing}?"
    filler = (FILLER * (length // len(FILLER) + 1))[: max(0, length - sum(len(f) + 1 for f in facts))]
    cut = len(filler) // 3
    text = f"{filler[:cut]}{facts[0]} {filler[cut : 2 * cut]}{facts[1]} {filler[2 * cut :]}"
    return {"question": question, "target": place, "input": text}


def write_babilong_copy(
    folder: Path, rows: dict[str, dict[str, int]], input_bytes: dict[str, int], declared: tuple[str, ...] = ()
) -> dict[str, dict[str, list[dict[str, str]]]]:
    """Write a copy with `rows[length][split]` rows per split, inputs of `input_bytes[length]` bytes; `declared`:
    more lengths in the README whose files are absent (a partial download). Returns the rows written."""
    written: dict[str, dict[str, list[dict[str, str]]]] = {}
    configs, infos = [], []
    for length in [*rows, *declared]:
        splits = rows.get(length, {"qa1": 0})
        configs.append(
            {
                "config_name": length,
                "data_files": [{"split": split, "path": f"{length}/{split}-*"} for split in splits],
            }
        )
        features = [{"name": column, "dtype": "string"} for column in ("question", "target", "input")]
        info: dict = {"config_name": length, "features": features, "splits": []}
        infos.append(info)
        if length not in rows:
            continue
        (folder / length).mkdir(parents=True, exist_ok=True)
        for split, count in splits.items():
            table = [babilong_row(split, index, input_bytes[length]) for index in range(count)]
            written.setdefault(length, {})[split] = table
            columns = {column: [row[column] for row in table] for column in ("question", "target", "input")}
            arrow = pa.table(columns)
            pq.write_table(arrow, folder / length / f"{split}-00000-of-00001.parquet")
            info["splits"].append({"name": split, "num_bytes": arrow.nbytes, "num_examples": count})
    header = yaml.safe_dump({"language": ["en"], "dataset_info": infos, "configs": configs}, sort_keys=False)
    (folder / "README.md").write_text(f"---\n{header}---\n\n# BABILong (1000 samples), a test copy\n")
    return written


def write_hub_cache(cache_dir: Path, source: Path, repo_id: str = REPO_ID) -> Path:
    """Put the copy in `source` into a Hub cache as huggingface_hub lays a download out (blobs, a snapshot of
    symlinks, refs/main) and return the snapshot folder."""
    repo = cache_dir / f"datasets--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch) -> Path:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # both read at import
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"
