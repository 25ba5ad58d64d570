"""One run per output folder: a lock that a second launch into the same `output_dir` finds and is refused by.

The lock is an advisory `flock` on `output_dir/_hf_longssm.lock`, held by the run's main process from before it
decides where to start (resume or not) until its last local write. The kernel releases a `flock` when its holder dies,
however it dies, so a crashed or killed run's lock is taken over by the next launch, while a live run's is not. The
file names its holder (host, pid, start time) for the refusal message; its leading underscore keeps it out of
transformers' uploads (`ignore_patterns=["_*", ...]`) and it is removed on release. Re-entrant within a process: the
CLI holds it around the whole run and the trainer's `train()` inside takes it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from transformers.utils import logging


logger = logging.get_logger(__name__)

LOCK_FILE = "_hf_longssm.lock"
_held: dict[Path, list] = {}  # lock path -> [open file, depth], for this process


class OutputDirInUseError(RuntimeError):
    """Another live run holds the output folder."""


def _acquire(path: Path):
    """Open and `flock` the lock file without waiting; retry if it was replaced between open and lock."""
    while True:
        handle = open(path, "a+")  # noqa: SIM115 (kept open while the lock is held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            for _ in range(10):  # the holder writes its name right after locking
                handle.seek(0)
                holder = handle.read().strip()
                if holder:
                    break
                time.sleep(0.05)
            handle.close()
            raise OutputDirInUseError(
                f"{path.parent} is in use by another run ({holder or 'holder unknown'}). Two runs in one output_dir "
                "would overwrite each other's checkpoints and weights: wait for it to finish, or choose another "
                "output_dir."
            ) from None
        # A releasing holder unlinks the file after we opened it: then our lock is on a dead inode, retry.
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            return handle
        handle.close()


@contextlib.contextmanager
def hold_output_dir(output_dir: str | os.PathLike, is_main_process: bool = True) -> Iterator[None]:
    """Hold `output_dir` for this run (main process only; the others share the run's lock).

    Raises:
        `OutputDirInUseError`: another live run holds it.
    """
    if not is_main_process:
        yield
        return
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / LOCK_FILE).resolve()
    if path in _held:
        _held[path][1] += 1
    else:
        handle = _acquire(path)
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            logger.warning(f"Taking over {path}: the run that held it ({previous}) ended without releasing it.")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.ctime()}))
        handle.flush()
        _held[path] = [handle, 1]
    try:
        yield
    finally:
        _held[path][1] -= 1
        if _held[path][1] == 0:
            handle = _held.pop(path)[0]
            path.unlink(missing_ok=True)  # before unlocking: a waiting launch then retries on a fresh file
            handle.close()
