"""A folder of cached results, one JSON file per key (written atomically).

The one result cache of satcompress: an analysis describes what determines its result (the
model's weights digest, the data, the settings) in a JSON-serialisable ``payload``;
:func:`cache_key` hashes it, and :class:`JsonCache` stores the result as
``<folder>/<key>.json``. A lookup with the same key reads the file and computes nothing; any
change in the payload gives another key, hence another file. Files are written through
:func:`satcompress.utils.io.atomic_write_json`, so an interrupted run leaves either no entry
or a whole one; unreadable or foreign files are treated as misses.

It lives in ``utils`` (the bottom layer) so that every layer may use it, whatever layer an
analysis lives in (the per-layer sensitivity table in ``pipeline`` is the first user).

Example:
    >>> cache = JsonCache("runs/r18/cache")
    >>> key = cache_key({"model": digest, "data": fingerprint, "config": config.to_dict()})
    >>> result = cache.get(key)
    >>> if result is None:
    ...     result = cache.put(key, compute(), payload)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from satcompress.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

CACHE_FORMAT = "satcompress.cache/1"


def cache_root() -> Path:
    """The user's cache folder: ``$SATCOMPRESS_CACHE`` or ``~/.cache/satcompress``."""
    env = os.environ.get("SATCOMPRESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "satcompress"


def cache_key(payload: Any) -> str:
    """SHA-256 hex digest of ``payload`` as canonical JSON (sorted keys, no spaces).

    Args:
        payload: Anything JSON-serialisable (tuples count as lists) that determines a result.

    Raises:
        TypeError: If ``payload`` holds something JSON cannot represent.
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class JsonCache:
    """Results stored as ``<folder>/<key>.json``, one file per key.

    Args:
        folder: The cache folder (created on the first write).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"JsonCache({str(self.folder)!r})"

    def path(self, key: str) -> Path:
        """The file that holds (or would hold) the result for ``key``."""
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"a cache key is a lowercase hex digest, got {key!r}")
        return self.folder / f"{key}.json"

    def get(self, key: str) -> Any | None:
        """The stored result for ``key``, or None (no file, or a damaged or foreign one)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = read_json(path)
        except (OSError, ValueError) as err:
            log.warning("cache: ignoring unreadable %s (%s)", path, err)
            return None
        if (
            not isinstance(stored, dict)
            or stored.get("format") != CACHE_FORMAT
            or stored.get("key") != key
        ):
            log.warning("cache: ignoring %s (not a %s entry for this key)", path, CACHE_FORMAT)
            return None
        return stored.get("value")

    def put(self, key: str, value: Any, payload: Any = None) -> Any:
        """Store ``value`` under ``key`` atomically and return it.

        Args:
            key: From :func:`cache_key`.
            value: The JSON-serialisable result.
            payload: What the key was made of, stored beside the value for inspection.
        """
        entry = {"format": CACHE_FORMAT, "key": key, "payload": payload, "value": value}
        atomic_write_json(self.path(key), entry)
        return value

    def keys(self) -> list[str]:
        """The keys stored in the folder (sorted)."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if not p.name.startswith("."))
