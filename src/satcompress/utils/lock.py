"""One writer per run directory: an exclusive lock held while a stage writes its run directory.

Every stage that writes a run directory (train, distill, prune, quantize, evaluate, export,
BAIC, the sensitivity analyses) holds :func:`run_lock` on it from before its first write to
its end. A second process that tries to write the same directory fails at once with
:class:`RunDirLockedError`, whose message names the holder (pid, host, start time, command)
read from a small JSON file beside the lock::

    with run_lock("runs/r18"):
        ...  # write runs/r18/*

The lock is an OS file lock (``flock`` through :mod:`filelock`) on ``<run_dir>/.satcompress.lock``:
the kernel drops it when its process dies, however it dies, so a lock left by a killed
process is simply taken by the next one, which says so (the holder file is still there).
Within one process the lock is re-entrant (stages nest: ``quantize`` runs ``train`` in the
same directory); a forked or spawned child process is another writer and does not share it.
In a multi-process (DDP) run only rank 0 takes it: the other ranks write nothing but what
rank 0 coordinates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import inspect
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from satcompress.utils.io import atomic_write_json

log = logging.getLogger(__name__)

__all__ = [
    "HOLDER_FILE",
    "LOCK_FILE",
    "RunDirLockedError",
    "holds_run_lock",
    "read_holder",
    "run_lock",
    "secondary_rank",
]

LOCK_FILE = ".satcompress.lock"
HOLDER_FILE = ".satcompress.lock.json"
#: Environment variables naming a process's rank in a multi-process job (rank 0 locks).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
#: How long a refused writer waits for the holder to finish writing its holder file.
HOLDER_WAIT_S = 2.0

F = TypeVar("F", bound=Callable[..., Any])


class RunDirLockedError(RuntimeError):
    """Another process is writing the run directory (the message names it).

    Attributes:
        run_dir: The run directory.
        holder: What the holder wrote about itself (empty if unknown).
    """

    def __init__(self, run_dir: Path, holder: dict[str, Any]) -> None:
        self.run_dir, self.holder = run_dir, holder
        super().__init__(_locked_message(run_dir, holder))


@dataclasses.dataclass
class _Hold:
    lock: FileLock
    pid: int
    depth: int = 1


_HELD: dict[Path, _Hold] = {}
_GUARD = threading.Lock()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run directory's lock (created with the directory if missing) for the block.

    Args:
        run_dir: The run directory.

    Yields:
        The run directory, resolved.

    Raises:
        RunDirLockedError: Another process holds the lock.
    """
    path = Path(run_dir).expanduser().resolve()
    if secondary_rank():
        yield path
        return
    with _GUARD:
        hold = _HELD.get(path)
        if hold is not None and hold.pid == os.getpid():
            hold.depth += 1
        else:  # not held, or held by the parent this process was forked from
            hold = _HELD[path] = _acquire(path)
    try:
        yield path
    finally:
        with _GUARD:
            hold.depth -= 1
            if hold.depth == 0:
                del _HELD[path]
                _release(path, hold)


def holds_run_lock(func: F) -> F:
    """Decorate a function so that it runs holding :func:`run_lock` on its ``run_dir`` argument.

    A ``run_dir`` of None (nothing written) takes no lock.
    """
    signature = inspect.signature(func)

    @functools.wraps(func)
    def locked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        run_dir = bound.arguments.get("run_dir")
        if run_dir is None:
            return func(*args, **kwargs)
        with run_lock(run_dir):
            return func(*args, **kwargs)

    return locked  # type: ignore[return-value]


def read_holder(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What the lock's current (or last) holder wrote about itself; empty if nothing."""
    try:
        holder = json.loads((Path(run_dir) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _acquire(path: Path) -> _Hold:
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / LOCK_FILE), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirLockedError(path, _wait_for_holder(path)) from None
    try:
        previous = read_holder(path)
        if previous:
            log.warning("%s", _takeover_message(path, previous))
        atomic_write_json(path / HOLDER_FILE, _this_process(path))
    except BaseException:
        lock.release()
        raise
    return _Hold(lock, os.getpid())


def _release(path: Path, hold: _Hold) -> None:
    try:
        if read_holder(path).get("pid") == hold.pid:
            (path / HOLDER_FILE).unlink(missing_ok=True)
    finally:
        hold.lock.release()


def _wait_for_holder(path: Path) -> dict[str, Any]:
    """The holder's details; it writes them just after taking the lock, so allow it a moment."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while not (holder := read_holder(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def _this_process(path: Path) -> dict[str, Any]:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": started,
        "command": _command_line(),
        "run_dir": str(path),
    }


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([name or "python", *argv[1:]])


def secondary_rank() -> bool:
    """Whether this process is a rank other than 0 of a multi-process job (it takes no lock)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) > 0:
            return True
    return False


def _pid_alive(pid: Any) -> bool | None:
    """Whether a process of this host is running (None: cannot tell)."""
    if not isinstance(pid, int) or pid <= 0 or sys.platform == "win32":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')}, running `{holder.get('command', '?')}`"
    )


def _locked_message(run_dir: Path, holder: dict[str, Any]) -> str:
    if not holder:
        return (
            f"{run_dir} is in use by another process (it has not written {HOLDER_FILE} yet): "
            "wait for it to finish, or choose another --run-dir"
        )
    message = f"{run_dir} is in use by another satcompress process: {_describe(holder)}"
    if holder.get("host") == socket.gethostname() and _pid_alive(holder.get("pid")) is False:
        message += (
            f". That process has ended, but one it started still holds the lock: stop it "
            f"(`fuser {run_dir / LOCK_FILE}` finds it) and run again"
        )
    else:
        message += ". Wait for it to finish (or stop it), or choose another --run-dir"
    return message


def _takeover_message(run_dir: Path, holder: dict[str, Any]) -> str:
    state = "which no longer holds it"
    if holder.get("host") == socket.gethostname() and _pid_alive(holder.get("pid")) is False:
        state = "which is no longer running"
    return f"{run_dir}: taking over the lock left by {_describe(holder)}, {state}"
