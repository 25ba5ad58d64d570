"""Where a figure comes from: the commit, the package versions, the machine, its load. Standard library only, so the
summary and its rendering never import torch."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
# The packages whose versions decide a timing (the comparisons' as well as ours).
VERSIONED = ("hf-longssm", "torch", "transformers", "accelerate", "datasets", "lm-eval", "deepspeed", "mambapy",
             "flash-linear-attention", "fla-core", "triton")  # fmt: skip


def git_commit() -> dict:
    """The commit the code was measured at, and whether the package or the benchmarks differ from it (a copy of the
    working tree without `.git`, as on a lent GPU machine, gives None)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "hf_longssm", "benchmarks"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    # Results JSONs and the READMEs' rendered blocks are written by the run itself: they do not make the code dirty.
    changed = [
        line for line in status.stdout.splitlines() if "benchmarks/results/" not in line and "README.md" not in line
    ]
    return {"commit": head.stdout.strip(), "dirty": bool(changed)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def machine(device: str = "cpu") -> dict:
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gib = None
    return {
        "device": device,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
