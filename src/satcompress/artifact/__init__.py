"""Deployable files: ONNX export, ONNX Runtime sessions, and the compressed artifact.

The artifact is one file holding the weights at their real precision (see
:mod:`satcompress.artifact.format`).
"""

from satcompress.artifact.format import (
    Artifact,
    ArtifactError,
    artifact_format,
    load_artifact,
    write_artifact,
)
from satcompress.artifact.onnx import (
    DeployableModel,
    export_onnx,
    make_session,
    read_metadata,
    run_session,
)

__all__ = [
    "Artifact",
    "ArtifactError",
    "DeployableModel",
    "artifact_format",
    "export_onnx",
    "load_artifact",
    "make_session",
    "read_metadata",
    "run_session",
    "write_artifact",
]
