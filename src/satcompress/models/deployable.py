"""Export a model (with its preprocessing) to a self-contained ONNX file.

The exported graph takes raw ``uint8`` images (B, 3, H, W) named ``image`` and returns
``logits``: normalisation and resizing are part of the file, so a device feeds it sensor
pixels. Class names and the input specification are stored in the file's metadata
(:func:`satcompress.runtime.onnx.read_metadata` reads them back). Running the file needs
no torch: see :mod:`satcompress.runtime`.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from satcompress.models.attention import no_attention_fast_path
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.utils.io import atomic_write_bytes

OPSET = 17

__all__ = ["OPSET", "DeployableModel", "export_onnx"]


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
    with warnings.catch_warnings(), torch.no_grad(), no_attention_fast_path():
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
