"""Run a self-contained ONNX classifier in ONNX Runtime (no torch).

The graphs satcompress writes (:func:`satcompress.models.deployable.export_onnx`, or rebuilt
from a ``.satc``) take raw ``uint8`` images (B, 3, H, W) named ``image`` and return
``logits``: normalisation and resizing are part of the file, so a device feeds it sensor
pixels. Class names and the input specification are stored in the file's metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from satcompress.runtime.saturation import make_saturation_safe, resolve_policy

if TYPE_CHECKING:  # imported where needed: a device session does not need it
    import onnx

#: What ONNX Runtime raises for a model it cannot load or run (plain ``Exception``
#: subclasses, one per status code).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(_ort_state, name)
    for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail",
    )
    if isinstance(getattr(_ort_state, name, None), type)
)  # fmt: skip


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored by :func:`~satcompress.models.deployable.export_onnx`.

    Other tools add plain-text entries of their own (ONNX Runtime's quantizer, for one):
    those are kept as strings.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: _json_or_text(p.value) for p in proto.metadata_props}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def make_session(
    source: str | Path | bytes | onnx.ModelProto,
    threads: int | None = None,
    int8_kernels: str = "auto",
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: all cores).

    Args:
        source: The ONNX file, its bytes, or the model itself (a ``ModelProto`` is
            re-encoded in place when ``int8_kernels`` asks for it: pass a copy to keep it).
        threads: Intra-op threads (default: all cores).
        int8_kernels: ``auto`` re-encodes 8-bit weights that ONNX Runtime's kernels would
            saturate on this CPU (x86 without VNNI) so the graph computes exactly what it
            says; ``exact`` always does, ``native`` never (fastest, possibly wrong there).
            See :mod:`satcompress.runtime.saturation`. The session's
            ``satcompress_uint8_weights`` attribute counts the tensors re-encoded.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    given = not isinstance(source, (str, os.PathLike, bytes))  # a ModelProto
    model = source if given else None
    rewritten = 0
    if resolve_policy(int8_kernels):
        if model is None:
            import onnx

            model = (
                onnx.load_from_string(source)
                if isinstance(source, bytes)
                else onnx.load(str(source))
            )
        rewritten = make_saturation_safe(model)
    if model is not None and (rewritten or given):
        data: str | bytes = model.SerializeToString()
    else:
        data = source if isinstance(source, bytes) else str(source)
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    session.satcompress_uint8_weights = rewritten
    return session


def run_session(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """Logits for a uint8 batch (numpy, (B, 3, H, W))."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: images})[0]
