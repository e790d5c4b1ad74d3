"""Export a model (with its preprocessing) to a self-contained ONNX file and run it.

The exported graph takes raw ``uint8`` images (B, 3, H, W) named ``image`` and returns
``logits``: normalisation and resizing are part of the file, so a device feeds it sensor
pixels. Class names and the input specification are stored in the file's metadata.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from satcompress.preprocess import InputSpec, Preprocess
from satcompress.runtime.saturation import make_saturation_safe, resolve_policy
from satcompress.utils.io import atomic_write_bytes

OPSET = 17


class DeployableModel(nn.Module):
    """``Preprocess`` followed by the classifier: uint8 images in, logits out."""

    def __init__(self, model: nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.preprocess = Preprocess(spec)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a uint8 batch."""
        return self.model(self.preprocess(images))


def export_onnx(
    model: nn.Module,
    spec: InputSpec,
    image_size: tuple[int, int],
    path: str | Path,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` with its preprocessing to a single ONNX file (written atomically).

    Args:
        model: The classifier (evaluated in eval mode; not modified).
        spec: Its input resolution and normalisation (baked into the graph).
        image_size: (height, width) of the uint8 images the file will receive.
        path: Destination ``.onnx`` file.
        metadata: Extra key/values stored (JSON-encoded) in the model's metadata.

    Returns:
        The path written.
    """
    wrapper = DeployableModel(model, spec).eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, 3, *image_size, dtype=torch.uint8)
    buffer = io.BytesIO()
    was_training = model.training
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter writes one self-contained file in seconds; the
        # dynamo exporter splits large weights into a side file and is much slower on CPU.
        torch.onnx.export(
            wrapper,
            (dummy,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    entries = {"input_spec": spec.to_dict(), **(metadata or {})}
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    return atomic_write_bytes(path, proto.SerializeToString())


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored by :func:`export_onnx`.

    Other tools add plain-text entries of their own (ONNX Runtime's quantizer, for one):
    those are kept as strings.
    """
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: _json_or_text(p.value) for p in proto.metadata_props}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def make_session(
    path: str | Path, threads: int | None = None, int8_kernels: str = "auto"
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: all cores).

    Args:
        path: The ONNX file.
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
    source: str | bytes = str(path)
    rewritten = 0
    if resolve_policy(int8_kernels):
        model = onnx.load(str(path))
        rewritten = make_saturation_safe(model)
        if rewritten:
            source = model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    session.satcompress_uint8_weights = rewritten
    return session


def run_session(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """Logits for a uint8 batch (numpy, (B, 3, H, W))."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: images})[0]
