"""The deployable artifact: one ``.satc`` file holding a model at its real precision.

The artifact is one file holding the weights at their real precision (see
:mod:`satcompress.artifact.format`).

Imported on first use (ONNX Runtime takes a while).
"""

from satcompress.utils.lazy import lazy_package

ARTIFACT_SUFFIX = ".satc"  # here, not in .format, so the CLI's help needs no ONNX import

__all__ = [
    "ARTIFACT_SUFFIX",
    *lazy_package(
        __name__,
        {
            "Artifact": "format",
            "EncodedArtifact": "format",
            "encode_artifact": "format",
            "BytePredictor": "encode",
            "encode": "encode",
            "layer_byte_table": "encode",
            "predict_bytes": "encode",
            "ArtifactError": "format",
            "artifact_format": "format",
            "load_artifact": "format",
            "write_artifact": "format",
        },
    ),
]
