"""Atomic file writes: a reader (or a resumed run) never sees half a file.

Lightning already saves its own checkpoints atomically; these cover the files zskt writes
itself (results.json, run_config.yaml, model.pt, few_shot_indices.json, decoded-data caches).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_json(data: Any, path: str | os.PathLike) -> None:
    """Write `data` as indented JSON, atomically."""
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save`, atomically."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))
