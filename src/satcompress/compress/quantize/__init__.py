"""Quantization: ONNX Runtime int8 PTQ and Brevitas QAT down to 1 bit, ending in an artifact.

Example:
    >>> result = quantize("runs/r18", "qat", run_dir="runs/r18_q4", config=QATConfig(bits=4))
    >>> result.size_bytes, result.bound_bytes, result.record["accuracy"]

The configs import at once; everything else (Brevitas takes seconds to import) on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from satcompress.compress.quantize.config import (
    CALIBRATION_METHODS,
    PTQConfig,
    QATConfig,
    load_bits_map,
)

_LAZY = {
    "QuantizeResult": "api",
    "dataset_for": "api",
    "evaluate_artifact": "api",
    "export_qat": "api",
    "pytorch_accuracy": "api",
    "quantize": "api",
    "export_qat_onnx": "export",
    "calibration_images": "ptq",
    "quantize_onnx": "ptq",
    "QATResult": "qat",
    "calibrate": "qat",
    "load_qat_model": "qat",
    "prepare_qat": "qat",
    "qat": "qat",
    "qat_train_config": "qat",
    "resolve_layer_bits": "qat",
    "split_reused_activations": "qat",
}

__all__ = ["CALIBRATION_METHODS", "PTQConfig", "QATConfig", "load_bits_map", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the heavy parts (ONNX Runtime's quantizer, Brevitas) on first use."""
    if name in _LAZY:
        module = importlib.import_module(f"satcompress.compress.quantize.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
