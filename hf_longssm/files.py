"""Reading `torch.save` files that a user or another run wrote, without running anything in them.

Checkpoints and weights travel (pushed to the Hub, copied between machines, downloaded to resume someone's run), so
a pickle is read with `weights_only=True` only: tensors, numbers, strings, lists, dicts. Anything else is refused
before it can run, with an error that names the file and says what to do. SECURITY.md lists every file hf_longssm
reads and how.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch


def load_torch_file(path: str | os.PathLike, remedy: str, *, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on CPU, with clear errors.

    Args:
        path (`str` or `os.PathLike`): the file.
        remedy (`str`): what the user should do when the file is refused or damaged (a sentence).
        mmap (`bool`, *optional*, defaults to `False`): memory-map the tensors (falls back to reading for the
            pre-1.6, non-zip format).

    Raises:
        `ValueError`: the file holds objects the restricted unpickler refuses (nothing in it ran), or it is damaged.
        `FileNotFoundError`: there is no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. {remedy}")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # a non-zip file cannot be mapped
    except pickle.UnpicklingError as err:  # the restricted unpickler refused it: a foreign object, or garbage
        found = [line.strip() for line in str(err).splitlines() if "Unsupported" in line]
        raise ValueError(
            f"{path} was refused: it holds something other than tensors, numbers and strings"
            f"{f' ({found[0]})' if found else ''}, or it is damaged. Nothing in it was run. {remedy} Do not load it "
            "with `weights_only=False` unless you trust whoever wrote it."
        ) from None
    except Exception as err:  # truncated zip, empty file
        raise ValueError(f"{path} is corrupted or truncated ({type(err).__name__}: {err}). {remedy}") from err
