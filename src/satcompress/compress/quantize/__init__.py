"""Quantization: ONNX Runtime int8 PTQ and Brevitas QAT down to 1 bit, ending in an artifact.

The quantize stage (ending in a ``.satc`` artifact and its record) is
:func:`satcompress.pipeline.quantize`::

    >>> result = sc.quantize("runs/r18", None, QATConfig(bits=4), "runs/r18_q4")
    >>> result.size_bytes, result.record["accuracy"]

The configs import at once; everything else (Brevitas takes seconds to import) on first use.
"""

from satcompress.compress.quantize.config import (
    CALIBRATION_METHODS,
    PTQConfig,
    QATConfig,
    load_bits_map,
)
from satcompress.utils.lazy import lazy_package

__all__ = [
    "CALIBRATION_METHODS",
    "PTQConfig",
    "QATConfig",
    "load_bits_map",
    *lazy_package(
        __name__,
        {
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
        },
    ),
]
