"""``evaluate()``: accuracy and cost of a model measured on its deployable ONNX file."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from satcompress.data import SceneDataset
from satcompress.evaluate.metrics import classification_metrics
from satcompress.evaluate.profile import LatencyConfig, count_macs, count_params, measure_latency
from satcompress.evaluate.record import RECORD_SCHEMA, environment, timestamp, validate_record
from satcompress.models.deployable import export_onnx
from satcompress.preprocess import InputSpec
from satcompress.runtime.onnx import make_session, read_metadata, run_session
from satcompress.utils.io import atomic_write_json
from satcompress.utils.lock import holds_run_lock

DEFAULT_LATENCY = LatencyConfig()


def predict_onnx(
    onnx_path: str | Path,
    dataset: SceneDataset,
    split: str = "test",
    batch_size: int = 64,
    threads: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Predicted class indices of an ONNX file over one split, run in ONNX Runtime.

    Raises:
        ValueError: If the file's class names differ from the dataset's.
    """
    meta = read_metadata(onnx_path)
    if "classes" in meta and list(meta["classes"]) != list(dataset.classes):
        raise ValueError(
            f"{onnx_path} was trained on classes {meta['classes']} but the dataset "
            f"'{dataset.name}' has {list(dataset.classes)}"
        )
    session = make_session(onnx_path, threads)
    images = dataset.splits[split].images
    predictions = []
    for start in tqdm(
        range(0, len(images), batch_size), desc=f"eval {split}", disable=not progress, leave=False
    ):
        batch = images[start : start + batch_size].numpy()
        predictions.append(run_session(session, np.ascontiguousarray(batch)).argmax(1))
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)


@holds_run_lock
def evaluate(
    model: nn.Module,
    dataset: SceneDataset,
    input_spec: InputSpec,
    *,
    model_name: str,
    recipe: dict[str, Any] | None = None,
    split: str = "test",
    run_dir: str | Path | None = None,
    latency: LatencyConfig | None = DEFAULT_LATENCY,
    batch_size: int = 64,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export ``model`` to fp32 ONNX and measure it in ONNX Runtime: one result record.

    Accuracy, per-class accuracy and the confusion matrix come from running the ONNX file
    (not the PyTorch model) over ``split``; ``size_bytes`` is that file's size; latency is
    measured on it at batch 1 and 64. The record is written to ``run_dir/record.json``.

    Args:
        model: The classifier (float (B, 3, H, W) -> logits).
        dataset: The loaded dataset (its class order must match the model's outputs).
        input_spec: The model's input resolution and normalisation.
        model_name: Name stored in the record (registry name or your own).
        recipe: The exact configuration that produced the model.
        split: Which split to score (``test`` by default).
        run_dir: Where ``model.onnx`` and ``record.json`` go (a temporary folder if None).
        latency: How to time the file; ``None`` skips timing (``latency_ms`` is then empty).
        batch_size: Batch size for scoring.
        extra: More keys to store in the record (e.g. training time).
        progress: Show a progress bar.

    Returns:
        The record (schema :data:`RECORD_SCHEMA`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(run_dir) if run_dir is not None else Path(tmp)
        onnx_path = folder / "model.onnx"
        meta = {"model": model_name, "classes": list(dataset.classes)}
        export_onnx(model, input_spec, dataset.image_size, onnx_path, metadata=meta)
        return evaluate_onnx(
            onnx_path,
            dataset,
            input_spec,
            model_name=model_name,
            params=count_params(model),
            macs=count_macs(model, input_spec.size or dataset.image_size),
            recipe=recipe,
            split=split,
            run_dir=run_dir,
            latency=latency,
            batch_size=batch_size,
            extra=extra,
            progress=progress,
        )


def evaluate_onnx(
    onnx_path: str | Path,
    dataset: SceneDataset,
    input_spec: InputSpec,
    *,
    model_name: str,
    params: int,
    macs: int,
    recipe: dict[str, Any] | None = None,
    split: str = "test",
    run_dir: str | Path | None = None,
    latency: LatencyConfig | None = DEFAULT_LATENCY,
    batch_size: int = 64,
    size_bytes: int | None = None,
    file_format: str = "onnx-fp32",
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score and time an ONNX file (uint8 input) in ONNX Runtime: one result record.

    Compressed variants use this directly: ``size_bytes`` and ``file_format`` then describe
    the deployable artifact the ONNX graph was rebuilt from, not the graph itself.

    Args:
        onnx_path: The ONNX file to run.
        dataset: The loaded dataset.
        input_spec: The input specification baked into the file (stored in the record).
        model_name: Name stored in the record.
        params: Parameter count of the model.
        macs: Multiply-accumulates at batch 1.
        recipe: The exact configuration that produced the model.
        split: Which split to score.
        run_dir: Where ``record.json`` goes (not written if None).
        latency: How to time the file; ``None`` skips timing.
        batch_size: Batch size for scoring.
        size_bytes: Bytes of the deployable file (default: the ONNX file's size).
        file_format: What the deployable file is (e.g. ``onnx-fp32``, ``artifact-int4``).
        extra: More keys to store in the record.
        progress: Show a progress bar.

    Returns:
        The record (schema :data:`RECORD_SCHEMA`).
    """
    threads = latency.threads if latency else None
    predictions = predict_onnx(onnx_path, dataset, split, batch_size, threads, progress)
    timing = measure_latency(onnx_path, dataset.image_size, latency) if latency else {}
    metrics = classification_metrics(
        predictions, dataset.splits[split].labels.numpy(), list(dataset.classes)
    )
    record = {
        "schema": RECORD_SCHEMA,
        "model": model_name,
        "dataset": dataset.name,
        "split": split,
        "recipe": recipe or {},
        "accuracy": metrics["accuracy"],
        "params": int(params),
        "macs": int(macs),
        "size_bytes": int(size_bytes if size_bytes is not None else Path(onnx_path).stat().st_size),
        "format": file_format,
        "latency_ms": {k: v["median_ms"] for k, v in timing.items() if k.startswith("bs")},
        "latency": timing,
        "per_class_accuracy": metrics["per_class_accuracy"],
        "confusion_matrix": metrics["confusion_matrix"],
        "num_samples": metrics["num_samples"],
        "classes": list(dataset.classes),
        # the real input size: a spec without one takes the images at their decode size
        "input": {**input_spec.to_dict(), "size": list(input_spec.size or dataset.image_size)},
        "split_source": dataset.split_source,
        "split_fingerprint": dataset.split_fingerprint,
        "created": timestamp(),
        "environment": environment(),
        **(extra or {}),
    }
    validate_record(record)
    if run_dir is not None:
        atomic_write_json(Path(run_dir) / "record.json", record)
    return record
