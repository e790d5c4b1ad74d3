"""The result record every stage writes, and crash-safe lists of records.

One schema serves every model variant (trained, distilled, pruned, quantized, searched):
the keys in :data:`REQUIRED_KEYS` are always present, so reports can compare anything.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from satcompress.utils.io import atomic_write_json, read_json

RECORD_SCHEMA = "satcompress.record/1"
REQUIRED_KEYS = (
    "model",
    "dataset",
    "recipe",
    "accuracy",
    "params",
    "macs",
    "size_bytes",
    "latency_ms",
)


def environment() -> dict[str, str]:
    """Library versions and platform, stored with every record."""
    import lightning
    import onnxruntime
    import torch
    import torchvision

    from satcompress import __version__

    return {
        "satcompress": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def timestamp() -> str:
    """Current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def validate_record(record: dict[str, Any]) -> dict[str, Any]:
    """Raise ``ValueError`` naming the missing keys if ``record`` breaks the schema."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"record is missing required keys: {', '.join(missing)}")
    if not 0.0 <= float(record["accuracy"]) <= 1.0:
        raise ValueError(f"record accuracy must be in [0, 1], got {record['accuracy']}")
    return record


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
    def _locked(self):
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
