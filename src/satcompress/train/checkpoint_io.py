"""Training checkpoints that are never half-written, and resume that never runs a pickle.

:class:`AtomicCheckpointIO` is the Lightning ``CheckpointIO`` plugin of :func:`train`: each
checkpoint goes to a temporary file in its folder, is fsynced and renamed over the old one,
so a crash or ``kill -9`` during a save leaves the previous complete file in place. Before
``last.ckpt`` is replaced, the previous one is kept as ``last.ckpt.prev`` (a hard link: no
copy), a second chance if ``last.ckpt`` is damaged some other way (a disk error, a partial
copy of the run directory).

:func:`resume_checkpoint` picks the file ``--resume`` continues from: ``last.ckpt``, read with
``torch.load(weights_only=True)`` (tensors and plain containers only: a pickle payload is
refused, never run); if that file is damaged or refused, ``last.ckpt.prev`` with a warning
(the bad file is moved to ``last.ckpt.bad``); if neither is usable, a
:class:`CheckpointError` naming the files and what to do. Loading goes through the plugin
too, always with ``weights_only=True``, whatever Lightning asks for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from satcompress.utils.io import atomic_open

log = logging.getLogger(__name__)

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "previous_path",
    "read_checkpoint",
    "remove_partial_writes",
    "resume_checkpoint",
]

PREVIOUS_SUFFIX = ".prev"
BAD_SUFFIX = ".bad"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: damaged, refused (not weights only) or not a checkpoint."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before ``path`` is kept (``last.ckpt.prev``)."""
    path = Path(path)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: temporary file, fsync, rename; the previous ``last`` kept.

    Args:
        keep_previous: File names whose previous version is kept as ``<name>.prev``.
    """

    def __init__(self, keep_previous: Collection[str] = ("last.ckpt",)) -> None:
        super().__init__()
        self.keep_previous = frozenset(keep_previous)
        self._preloaded: dict[str, dict[str, Any]] = {}

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically, keeping the previous one if asked."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        with atomic_open(path, "wb") as handle:  # removes its temporary file on any error
            self._write(checkpoint, handle)
            if path.name in self.keep_previous and path.is_file():
                _keep_previous(path)
        _fsync_dir(path.parent)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Read a checkpoint with ``weights_only=True`` (always), or the one preloaded for it."""
        preloaded = self._preloaded.pop(_key(path), None)
        if preloaded is not None:
            return preloaded
        return read_checkpoint(path)

    def remove_checkpoint(self, path: Any) -> None:
        """Remove a checkpoint and the previous version kept beside it."""
        super().remove_checkpoint(path)
        previous_path(path).unlink(missing_ok=True)

    def preload(self, path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
        """Hand Lightning's next load of ``path`` this already checked checkpoint (read once)."""
        self._preloaded[_key(path)] = checkpoint

    def _write(self, checkpoint: dict[str, Any], handle: IO[bytes]) -> None:
        torch.save(checkpoint, handle)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Lightning checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: If the file is damaged, holds more than tensors and plain containers
            (a pickle payload, refused without running it), or is no training checkpoint.
        FileNotFoundError: If it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise CheckpointError(
                f"{path} was refused: it holds Python objects that only a full unpickling "
                "would create, and unpickling can run arbitrary code (this program's "
                "checkpoints hold tensors and plain values only, so the file was not written "
                "by it or was altered). It was not loaded"
            ) from None
        raise _damaged(path, err) from None
    except Exception as err:  # noqa: BLE001 - zip, EOF and storage errors all mean damage
        raise _damaged(path, err) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a training checkpoint (no state_dict)")
    return checkpoint


def resume_checkpoint(last: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``--resume`` continues from, checked: ``last`` or the one before it.

    A damaged or refused ``last`` is moved to ``<name>.bad`` (so that the next save does not
    keep it as the previous one) and the previous checkpoint is used, with a warning.

    Args:
        last: The latest checkpoint (``run_dir/checkpoints/last.ckpt``).

    Returns:
        The checkpoint's path and its content.

    Raises:
        CheckpointError: Neither ``last`` nor the previous one is usable (the message says
            why, for each, and how to start over).
    """
    last = Path(last)
    previous = previous_path(last)
    problems = []
    for path in (last, previous):
        if not path.is_file():
            continue
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            _set_aside(last)
            log.warning(
                "%s; resuming from %s instead, the checkpoint saved before it (the bad file "
                "is kept as %s)", problems[0], path, last.name + BAD_SUFFIX,
            )  # fmt: skip
        elif path == previous:
            log.warning("%s is missing; resuming from %s, the checkpoint before it", last, path)
        return path, checkpoint
    if not problems:
        raise FileNotFoundError(f"nothing to resume: {last} does not exist")
    run_dir = last.parent.parent
    raise CheckpointError(
        f"cannot resume {run_dir}: " + "; ".join(problems) + ". No usable checkpoint is left: "
        f"train again without --resume in another --run-dir (or delete {last.parent} and "
        "rerun without --resume)"
    )


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of checkpoint saves a killed process left unfinished.

    Call it holding the run directory's lock (no other process is writing there).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
        log.warning("removed %s, a checkpoint write an interrupted run left unfinished", path)
    return removed


def _damaged(path: Path, err: BaseException) -> CheckpointError:
    detail = str(err).split(". ")[0].strip() or type(err).__name__
    return CheckpointError(
        f"{path} is damaged ({path.stat().st_size:,} bytes, cut short or corrupt: {detail})"
    )


def _keep_previous(path: Path) -> None:
    """Make ``<path>.prev`` the file ``path`` holds now (hard link, else copy; atomic)."""
    previous = previous_path(path)
    staging = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    try:
        os.link(path, staging)
    except OSError:  # a file system without hard links
        shutil.copy2(path, staging)
    os.replace(staging, previous)


def _set_aside(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(path.name + BAD_SUFFIX))


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (POSIX; a no-op where directories cannot open)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _key(path: Any) -> str:
    return os.path.abspath(os.fspath(path))
