"""Versions of the packages a result depends on, for results files and model cards."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable


# What a post-trained model's card lists under "Framework versions".
CARD_PACKAGES = ("hf-longssm", "transformers", "torch", "accelerate", "datasets", "peft")


def package_versions(names: Iterable[str] = CARD_PACKAGES) -> dict[str, str]:
    """The installed version of each package in `names`, in that order; packages not installed are left out.

    Args:
        names (`Iterable[str]`, *optional*, defaults to `CARD_PACKAGES`): distribution names as pip spells them;
            `"python"` stands for the interpreter.

    Returns:
        `dict[str, str]`: `{name: version}`.

    Example:
        >>> package_versions(["python", "torch"])  # doctest: +SKIP
        {'python': '3.11.7', 'torch': '2.13.0+cpu'}
    """
    versions = {}
    for name in names:
        if name == "python":
            versions[name] = platform.python_version()
            continue
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
