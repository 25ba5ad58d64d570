"""What the commands leave on disk: results JSON, never overwriting a result by accident (figures:
`hf_longssm.evaluation.plots`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def free_path(path: Path) -> Path:
    """`path`, or `path` with a number added when it exists: results already written are never lost."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def write_json(payload: Any, path: Path, overwrite: bool = False) -> Path:
    """Write `payload` as indented JSON and return the path written.

    Args:
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing file; by default the payload goes
            to a numbered name next to it instead (`free_path`).
    """
    path = Path(path)
    if not overwrite:
        path = free_path(path)
    path.write_text(json.dumps(payload, indent=2))
    return path
