"""The result record every stage writes (stored by ``satcompress.experiments.store``).

One schema serves every model variant (trained, distilled, pruned, quantized, searched):
the keys in :data:`REQUIRED_KEYS` are always present, so reports can compare anything.

``size_bytes`` is always the deployable file's size, and ``format`` names that file:
``onnx-fp32`` for a plain fp32 ONNX file, ``artifact-<bits>`` (``artifact-fp32``,
``artifact-int8``, ``artifact-int4-mixed``, ...) for a ``.satc`` artifact (rows of older
runs may say ``onnx-int8``: a quantized ONNX file, before the artifact existed).
"""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any

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
