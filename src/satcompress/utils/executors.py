"""Independent tasks run here, in worker processes or as Ray tasks, collected as they finish.

One small pool interface serves every caller that fans work out (BAIC's candidate
fine-tunes, an experiment's independent stages): submit ``fn(arg)`` under a name, then take
finished tasks one at a time, in completion order, and submit more as dependencies clear::

    with task_pool("process", workers=2) as pool:
        for job in jobs:
            pool.submit(job.id, run_job, job)
        while pool.pending:
            done = pool.next_done()       # Done(name, result, error)

``serial`` runs each task in this process when its result is asked for; ``process`` uses
``concurrent.futures`` with the ``spawn`` start method (every worker imports what it needs;
``fn`` and its argument must pickle); ``ray`` submits Ray tasks (``ray.init(address)``, a
local runtime when no address is given). A task that raises, or a worker that dies, comes
back as a :class:`Done` with its ``error`` set: it never loses the others.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["EXECUTORS", "Done", "TaskPool", "task_pool", "threads_per_worker"]

#: The kinds of :func:`task_pool`.
EXECUTORS = ("serial", "process", "ray")


@dataclasses.dataclass
class Done:
    """A finished task.

    Attributes:
        name: The name it was submitted under.
        result: What ``fn`` returned (None if it failed).
        error: The exception it raised, or that lost it (None if it succeeded).
    """

    name: str
    result: Any = None
    error: BaseException | None = None


class TaskPool:
    """The pool interface: :meth:`submit` tasks, take them back with :meth:`next_done`."""

    def __init__(self) -> None:
        self._pending: dict[Any, str] = {}

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet taken back."""
        return len(self._pending)

    def submit(self, name: str, fn: Callable[[Any], Any], arg: Any) -> None:
        """Start ``fn(arg)`` under ``name`` (unique among the pending tasks)."""
        raise NotImplementedError

    def next_done(self) -> Done:
        """Wait for the next task to finish and return it (raises if none is pending)."""
        raise NotImplementedError


class _SerialPool(TaskPool):
    """Runs each task here, in submission order, when the next result is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[tuple[str, Callable, Any]] = deque()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, name: str, fn: Callable[[Any], Any], arg: Any) -> None:
        self._queue.append((name, fn, arg))

    def next_done(self) -> Done:
        name, fn, arg = self._queue.popleft()
        try:
            return Done(name, fn(arg))
        except Exception as err:  # noqa: BLE001 - the caller decides what a failure means
            return Done(name, error=err)


class _ProcessPool(TaskPool):
    """``concurrent.futures.ProcessPoolExecutor`` with spawned workers."""

    def __init__(self, pool: futures.ProcessPoolExecutor) -> None:
        super().__init__()
        self._pool = pool

    def submit(self, name: str, fn: Callable[[Any], Any], arg: Any) -> None:
        self._pending[self._pool.submit(fn, arg)] = name

    def next_done(self) -> Done:
        future = next(futures.as_completed(list(self._pending)))
        name = self._pending.pop(future)
        try:
            return Done(name, future.result())
        except Exception as err:  # noqa: BLE001 - a dead worker must not lose the others
            return Done(name, error=err)


class _RayPool(TaskPool):
    """Ray tasks, each reserving ``cpus`` CPUs of the cluster."""

    def __init__(self, ray: Any, cpus: int) -> None:
        super().__init__()
        self._ray, self._cpus, self._remote = ray, cpus, {}

    def submit(self, name: str, fn: Callable[[Any], Any], arg: Any) -> None:
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(num_cpus=self._cpus)(fn)
        self._pending[self._remote[fn].remote(arg)] = name

    def next_done(self) -> Done:
        ready, _ = self._ray.wait(list(self._pending), num_returns=1)
        name = self._pending.pop(ready[0])
        try:
            return Done(name, self._ray.get(ready[0]))
        except Exception as err:  # noqa: BLE001 - a lost task must not lose the others
            return Done(name, error=err)


def threads_per_worker(workers: int) -> int:
    """The cores of this machine shared between ``workers`` tasks at once (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextlib.contextmanager
def task_pool(
    executor: str = "serial", workers: int = 1, *, ray_address: str | None = None
) -> Iterator[TaskPool]:
    """A pool of ``workers`` tasks at once, closed (workers joined, Ray shut down) on exit.

    Args:
        executor: ``serial`` (here, one task after the other), ``process`` or ``ray``.
        workers: Tasks at once (process and Ray); each Ray task reserves
            :func:`threads_per_worker` CPUs.
        ray_address: Address of an existing Ray cluster (None: a local Ray runtime, started
            here and shut down on exit).

    Raises:
        ValueError: For an unknown executor.
        ImportError: For ``ray`` when Ray is not installed (the message says how to get it).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}; got {executor!r}")
    if executor == "serial":
        yield _SerialPool()
    elif executor == "process":
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context) as pool:
            yield _ProcessPool(pool)
    else:
        with _ray_runtime(ray_address) as ray:
            yield _RayPool(ray, threads_per_worker(workers))


@contextlib.contextmanager
def _ray_runtime(address: str | None) -> Iterator[Any]:
    try:
        import ray
    except ImportError as err:
        raise ImportError("executor 'ray' needs Ray: pip install 'satcompress[ray]'") from err
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            num_cpus=None if address else os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()
