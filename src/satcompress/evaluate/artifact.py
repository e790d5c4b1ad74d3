"""Score and time a deployable artifact: the ONNX model rebuilt from it, in ONNX Runtime."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from satcompress.artifact.format import artifact_format, load_artifact
from satcompress.artifact.manifest import manifest_card
from satcompress.data import SceneDataset
from satcompress.evaluate.evaluate import DEFAULT_LATENCY, evaluate_onnx
from satcompress.evaluate.profile import LatencyConfig
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.utils.lock import holds_run_lock

__all__ = ["evaluate_artifact", "pytorch_accuracy"]


@holds_run_lock
def evaluate_artifact(
    path: str | Path,
    dataset: SceneDataset,
    *,
    split: str = "test",
    run_dir: str | Path | None = None,
    latency: LatencyConfig | None = DEFAULT_LATENCY,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score and time an artifact in ONNX Runtime: the record of its rebuilt ONNX model.

    ``size_bytes`` is the artifact file's size, ``format`` e.g. ``artifact-int4``, and the
    record gets ``bound_bytes`` (sum(params x bits) / 8).
    """
    artifact = load_artifact(path)
    manifest = artifact.manifest
    card = manifest_card(manifest)
    spec = InputSpec.from_dict(card.get("input") or {})
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = artifact.save_onnx(Path(tmp) / "artifact.onnx")
        return evaluate_onnx(
            onnx_path,
            dataset,
            spec,
            model_name=str(card.get("model", "model")),
            params=int(manifest.get("params", manifest["stats"]["params"])),
            macs=int(manifest.get("macs", 0)),
            recipe=card.get("recipe", {}),
            split=split,
            run_dir=run_dir,
            latency=latency,
            size_bytes=artifact.size_bytes,
            file_format=artifact_format(manifest),
            extra={
                "bound_bytes": artifact.bound_bytes,
                "artifact": {"path": str(path), "stats": manifest["stats"]},
                "lineage": card.get("lineage", []),
                **(extra or {}),
            },
            progress=progress,
        )


def pytorch_accuracy(
    model: nn.Module, spec: InputSpec, dataset: SceneDataset, split: str = "test"
) -> float:
    """Top-1 accuracy of a PyTorch model (e.g. the fake-quant QAT model) on ``split``."""
    preprocess = Preprocess(spec)
    data = dataset.splits[split]
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data.labels), 128):
            logits = model(preprocess(data.images[start : start + 128]))
            correct += int((logits.argmax(1) == data.labels[start : start + 128]).sum())
    return correct / max(1, len(data.labels))
