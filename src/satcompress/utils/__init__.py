"""Small shared helpers: atomic file writes, hashing, logging."""

from satcompress.utils.io import atomic_write_bytes, atomic_write_json, file_digest, read_json

__all__ = ["atomic_write_bytes", "atomic_write_json", "file_digest", "read_json"]
