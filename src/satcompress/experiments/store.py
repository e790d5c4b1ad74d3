"""The results store: crash-safe JSON lists of records, shared by concurrent benchmarks."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from satcompress.evaluate.record import validate_record
from satcompress.utils.io import atomic_write_json, read_json


class RecordList:
    """A JSON list of records on disk, rewritten atomically after every addition.

    Benchmarks use it to be resumable: each finished row is saved at once, and a rerun
    skips the rows whose ``id`` is already there.

    Args:
        path: The JSON file (created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = read_json(self.path) if self.path.is_file() else []
        if not isinstance(self.records, list):
            raise ValueError(f"{self.path} must hold a JSON list of records")

    def get(self, record_id: str) -> dict[str, Any] | None:
        """The record with this ``id``, or ``None``."""
        return next((r for r in self.records if r.get("id") == record_id), None)

    def put(self, record: dict[str, Any]) -> None:
        """Add or replace the record with the same ``id`` and save the file atomically.

        The file is re-read under a lock first, so several benchmark processes can add rows
        to one file without losing each other's.
        """
        validate_record(record)
        with self._locked():
            saved = read_json(self.path) if self.path.is_file() else []
            keep = [r for r in saved if r.get("id") != record.get("id")]
            self.records = [*keep, record]
            atomic_write_json(self.path, self.records)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get_or_run(self, record_id: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Return the saved record, or run ``run()``, save its record under ``record_id``."""
        saved = self.get(record_id)
        if saved is not None:
            return saved
        record = {"id": record_id, **run()}
        self.put(record)
        return record
