"""Which transformers releases hf_longssm works with, checked once when it is imported.

The stateful mixers read transformers' mixer attributes (`in_proj`, `conv1d`, `A_log`, ...), take the cache under
either of its names (`cache_params` up to 5.23, `cache` from 5.24) and keep it under activation checkpointing through
`GradientCheckpointingLayer._can_checkpoint_with_cache`. CI runs the test suite on the oldest release below, on the
pinned one (`requirements/constraints.txt`) and on the newest release `pyproject.toml` allows.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import transformers
from packaging.version import Version


# The oldest release that passes the tests (CI job "minimum"); older ones fail at import with a clear message.
MINIMUM_TRANSFORMERS = "5.21.0"
# The newest minor release tested (CI job "newest"); later ones import with a warning.
NEWEST_TESTED_TRANSFORMERS = "5.25"


def check_transformers_version(version: str | None = None) -> None:
    """Raise `ImportError` for a transformers release hf_longssm cannot work with; warn (once) for one it has not
    been tested with.

    Args:
        version (`str`, *optional*): the version to check; defaults to the installed `transformers.__version__`.
    """
    version = Version(version or transformers.__version__)
    if version < Version(MINIMUM_TRANSFORMERS):
        raise ImportError(
            f"hf_longssm needs transformers>={MINIMUM_TRANSFORMERS} (the oldest release its tests pass on), but "
            f"transformers {version} is installed. Upgrade: pip install -U 'transformers>={MINIMUM_TRANSFORMERS},<6'."
        )
    if version.release[:2] > Version(NEWEST_TESTED_TRANSFORMERS).release[:2] or version.is_prerelease:
        warnings.warn(
            f"hf_longssm is tested with transformers {MINIMUM_TRANSFORMERS} to {NEWEST_TESTED_TRANSFORMERS}.x; "
            f"{version} is installed. If a forward fails, install a tested release: pip install "
            f"'transformers>={MINIMUM_TRANSFORMERS},<={NEWEST_TESTED_TRANSFORMERS}.99'.",
            UserWarning,
            stacklevel=2,
        )


@contextlib.contextmanager
def peft_without_deprecation_warnings() -> Iterator[None]:
    """Around hf_longssm's calls into peft: peft (0.21, the newest release) reads `model.is_gradient_checkpointing`,
    which transformers deprecates from 5.24 on. That warning is for peft to act on, not the user, so hf_longssm's
    own peft calls do not pass it on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


check_transformers_version()
