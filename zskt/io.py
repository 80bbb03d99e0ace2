"""Atomic file writes: a reader (or a resumed run) never sees half a file.

Lightning already saves its own checkpoints atomically; these cover the files zskt writes
itself (results.json, run_config.yaml, model.pt, few_shot_indices.json, decoded-data caches).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


def umask_mode() -> int:
    """The mode a new file gets under the process's umask (0o644 under umask 022)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, then rename into place. The file gets
    the mode the umask gives, as a plain `open` would: mkstemp's temporary file is 0600, and a
    team sharing results or teachers on a cluster must be able to read them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # a full disk's error then names the file that could not be written
        raise


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file, atomically."""
    atomic_write_bytes(text.encode(), path)


def atomic_write_bytes(content: bytes, path: str | os.PathLike) -> None:
    """Write a file's bytes, atomically."""
    _atomic_write(path, lambda handle: handle.write(content))


def atomic_write_json(data: Any, path: str | os.PathLike) -> None:
    """Write `data` as indented JSON, atomically."""
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save`, atomically."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


@contextmanager
def new_folders_removed_on_failure(path: str | os.PathLike) -> Iterator[None]:
    """Around code that may create `path` (and its missing parents) and then fail (a download with no
    network): the folders it created are removed again if they are left empty. Only empty ones:
    `rmdir` refuses anything else."""
    path = Path(path).absolute()
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]  # innermost first
    try:
        yield
    except BaseException:
        for folder in missing:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
