"""Crash-safe file writes and file digests.

Every result, card and cache file goes through :func:`atomic_write_bytes`: the data is
written to a temporary file in the same folder, flushed to disk and renamed over the
target, so a crash or Ctrl-C leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: Destination file. Its parent folder is created if missing.
        data: The bytes to write.

    Returns:
        The destination path.
    """
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Write a file that appears whole or not at all: a temporary file, fsynced, then renamed.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` keeps what
    it held before.

    Args:
        path: Destination file. Its parent folder is created if missing.
        mode: ``"wb"`` or ``"w"`` (then ``encoding``/``newline`` may be given).
        **kwargs: Passed to :func:`open` (via ``os.fdopen``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode())  # mkstemp makes 0600; a new file normally follows umask
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def _default_mode() -> int:
    """The permissions ``open()`` would give a new file: 0666 less the process umask.

    Read once (reading the umask means setting it), so threads do not race on it later.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` as indented JSON and write it atomically to ``path``."""
    text = json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_bytes(path, text.encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error if it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per line, in order (``[]`` if missing).

    A line that is not valid JSON (the torn last line of an interrupted append) is skipped
    with a warning, as are blank lines and lines that hold no object.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            log.warning("%s:%d: skipped a line that is not JSON (%s)", path, number, error)
    return [row for row in rows if isinstance(row, dict)]


def file_digest(path: str | os.PathLike, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks so large archives need little memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    """Make paths, tuples of numpy scalars and similar JSON-serialisable."""
    if isinstance(obj, os.PathLike):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")
