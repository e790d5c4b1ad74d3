"""Deployable files: ONNX export (with preprocessing) and ONNX Runtime sessions."""

from satcompress.artifact.onnx import (
    DeployableModel,
    export_onnx,
    make_session,
    read_metadata,
    run_session,
)

__all__ = ["DeployableModel", "export_onnx", "make_session", "read_metadata", "run_session"]
