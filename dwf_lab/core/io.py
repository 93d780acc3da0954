"""Small I/O helpers every layer uses: atomic file writes, JSON-able values, progress bars.

:func:`atomic_write_bytes` / :func:`atomic_write_text` write to a temporary file in the
same directory, fsync it and rename it over the target, so a crash mid-write leaves the
previous file intact. :func:`jsonable` turns dicts, tuples, paths and tensors into JSON
values; :func:`progress_bar` is tqdm, redrawn only every 30 s when nobody is watching;
:func:`file_sha256` hashes a file in 1 MiB blocks.
"""
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)   # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def progress_bar(iterable=None, *, total=None, desc=None, initial=0, leave=True, disable=False):
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    in_notebook = "ipykernel" in sys.modules
    mininterval = 0.5 if (interactive or in_notebook) else 30.0
    return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, disable=disable,
                mininterval=mininterval, dynamic_ncols=True, smoothing=0.1)
