"""``quantize()``: PTQ or QAT of a trained model, ending in a deployable artifact and a record."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from satcompress.artifact.format import artifact_format, load_artifact, write_artifact
from satcompress.artifact.manifest import artifact_info, dataset_info
from satcompress.artifact.onnx import export_onnx
from satcompress.checkpoint import TrainedModel, load_trained
from satcompress.compress.quantize.config import PTQConfig, QATConfig
from satcompress.compress.quantize.export import export_qat_onnx, to_fake_quant_module
from satcompress.compress.quantize.ptq import calibration_images, quantize_onnx
from satcompress.compress.quantize.qat import QATResult, check_classes, qat
from satcompress.config import ConfigError
from satcompress.data import SceneDataset
from satcompress.evaluate import LatencyConfig, count_macs, count_params, evaluate_onnx
from satcompress.evaluate.evaluate import DEFAULT_LATENCY
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.train import TrainConfig, load_config_dataset
from satcompress.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

METHODS = ("ptq", "qat")
ARTIFACT_NAME = "model.satc"
SETTINGS_FILE = "quantize.yaml"


@dataclasses.dataclass
class QuantizeResult:
    """What :func:`quantize` returns.

    Attributes:
        method: ``ptq`` or ``qat``.
        status: ``ok``, or ``diverged`` when QAT hit a NaN/inf loss (the artifact then holds
            the last good checkpoint).
        message: Why a run stopped early (empty when ``ok``).
        onnx_path: The quantized ONNX graph (QDQ) the artifact was built from.
        artifact_path: The deployable artifact.
        manifest: The artifact's manifest (``size_bytes`` and ``stats.bound_bytes`` inside).
        record: The evaluation record (None without evaluation).
        input_spec: The model's input spec.
        dataset: The dataset used.
        model: The fake-quantized PyTorch model (QAT), or None (PTQ works on the ONNX graph).
        qat: The :class:`QATResult` (QAT only).
    """

    method: str
    status: str
    message: str
    onnx_path: Path
    artifact_path: Path
    manifest: dict[str, Any]
    record: dict[str, Any] | None
    input_spec: InputSpec
    dataset: SceneDataset
    model: nn.Module | None = None
    qat: QATResult | None = None

    @property
    def size_bytes(self) -> int:
        """Bytes of the artifact on disk."""
        return int(self.manifest["size_bytes"])

    @property
    def bound_bytes(self) -> float:
        """sum(params x bits) / 8 of the quantized model."""
        return float(self.manifest["stats"]["bound_bytes"])


def quantize(
    checkpoint: str | Path | TrainedModel,
    method: str = "ptq",
    *,
    run_dir: str | Path,
    config: PTQConfig | QATConfig | None = None,
    dataset: SceneDataset | None = None,
    train_config: TrainConfig | None = None,
    evaluate: bool = True,
    split: str = "test",
    latency: LatencyConfig | None = DEFAULT_LATENCY,
    check_agreement: bool = True,
    resume: bool = False,
    progress: bool = True,
) -> QuantizeResult:
    """Quantize a trained model and write its deployable artifact (``run_dir/model.satc``).

    ``ptq``: static int8 (or dynamic for transformers) with ONNX Runtime on the exported graph,
    calibrated on train images. ``qat``: Brevitas QAT at ``config.bits`` through the training
    loop, exported as an int8 QDQ graph whose low-bit weights the artifact packs. The record
    (``run_dir/record.json``) measures the ONNX model rebuilt from the artifact in ONNX
    Runtime; ``size_bytes`` is the artifact's size and ``bound_bytes`` sum(params x bits) / 8.

    Args:
        checkpoint: Run directory or weights file (with its card), or a ``TrainedModel``.
        method: ``ptq`` or ``qat``.
        run_dir: Output folder.
        config: A :class:`PTQConfig` or :class:`QATConfig` (default settings if None).
        dataset: An already loaded dataset (default: the one the card's recipe names).
        train_config: QAT training settings (default: derived from the card's recipe).
        evaluate: Score the artifact on ``split`` and write ``record.json``.
        split: The split to score.
        latency: How to time the artifact; None skips timing.
        check_agreement: Also score the PyTorch fake-quant model (QAT) and store it as
            ``pytorch_accuracy`` next to the artifact's accuracy.
        resume: Continue an interrupted QAT run from its last checkpoint.
        progress: Show progress bars.

    Returns:
        A :class:`QuantizeResult`.

    Raises:
        ConfigError: For an unknown method or settings of the other method.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    expected = PTQConfig if method == "ptq" else QATConfig
    config = config if config is not None else expected()
    if not isinstance(config, expected):
        raise ConfigError(f"method {method!r} takes a {expected.__name__}, got {type(config)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trained = checkpoint if isinstance(checkpoint, TrainedModel) else load_trained(checkpoint)
    if method == "ptq":
        dataset = dataset or dataset_for(trained, train_config, progress)
        result = _ptq(trained, config, run_dir, dataset)
    else:
        result = _qat(trained, config, run_dir, dataset, train_config, resume, progress)
    _save_settings(run_dir, result, config, trained)
    if evaluate:
        fake_quant = None
        if check_agreement and result.model is not None:
            fake_quant = pytorch_accuracy(result.model, result.input_spec, result.dataset, split)
        result.record = evaluate_artifact(
            result.artifact_path,
            result.dataset,
            split=split,
            run_dir=run_dir,
            latency=latency,
            extra=_record_extra(result, fake_quant),
            progress=progress,
        )
    return result


def dataset_for(
    trained: TrainedModel, train_config: TrainConfig | None = None, progress: bool = True
) -> SceneDataset:
    """Load the dataset a checkpoint was trained on (from its card's recipe).

    Raises:
        ConfigError: If the card does not name the dataset and no ``train_config`` is given.
    """
    if train_config is None:
        recipe = dict(trained.card.get("recipe") or {})
        if not recipe.get("dataset") or not recipe.get("data_dir"):
            raise ConfigError(
                f"{trained.weights_path}: its card does not name the dataset; pass dataset= "
                "(or --dataset and --data-dir)"
            )
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        train_config = TrainConfig.from_dict({k: v for k, v in recipe.items() if k in names})
    return load_config_dataset(train_config, progress)


def _ptq(
    trained: TrainedModel, config: PTQConfig, run_dir: Path, dataset: SceneDataset
) -> QuantizeResult:
    check_classes(trained, dataset)
    name = trained.card.get("model", type(trained.model).__name__)
    meta = {"model": name, "classes": list(dataset.classes)}
    fp32 = export_onnx(
        trained.model, trained.input_spec, dataset.image_size, run_dir / "model_fp32.onnx", meta
    )
    images = calibration_images(dataset, config.calibration_images, config.seed)
    int8 = quantize_onnx(fp32, run_dir / "model_int8.onnx", images, config)
    info = _artifact_info(trained.model, trained.input_spec, dataset, name, "ptq", config)
    manifest = write_artifact(int8, run_dir / ARTIFACT_NAME, info=info)
    log.info("PTQ artifact: %s bytes (bound %.0f)", manifest["size_bytes"], _bound(manifest))
    return QuantizeResult(
        "ptq", "ok", "", int8, run_dir / ARTIFACT_NAME, manifest, None, trained.input_spec, dataset
    )


def _qat(
    trained: TrainedModel,
    config: QATConfig,
    run_dir: Path,
    dataset: SceneDataset | None,
    train_config: TrainConfig | None,
    resume: bool,
    progress: bool,
) -> QuantizeResult:
    result = qat(
        trained,
        config,
        run_dir,
        train_config=train_config,
        dataset=dataset,
        resume=resume,
        progress=progress,
    )
    return export_qat(result.model, result.input_spec, result.dataset, run_dir, result)


def export_qat(
    model: nn.Module,
    spec: InputSpec,
    dataset: SceneDataset,
    run_dir: str | Path,
    result: QATResult,
    artifact_path: str | Path | None = None,
) -> QuantizeResult:
    """Write a QAT model's QDQ ONNX graph and its artifact (``run_dir/model.satc``)."""
    run_dir = Path(run_dir)
    name = result.train_config.model
    meta = {"model": name, "classes": list(dataset.classes)}
    onnx_path, bits, layers = export_qat_onnx(
        model, spec, dataset.image_size, run_dir / "model_qdq.onnx", result.layer_bits, meta
    )
    probe = torch.zeros(2, 3, *(spec.size or dataset.image_size))
    plain = to_fake_quant_module(model, probe)  # Brevitas layers defeat FlopCounterMode
    info = _artifact_info(plain, spec, dataset, name, "qat", result.config)
    info["params"] = sum(  # the model's own parameters, not the quantizers' scales
        p.numel() for n, p in model.named_parameters() if "_quant." not in n
    )
    info["qat_status"] = result.status
    path = Path(artifact_path or run_dir / ARTIFACT_NAME)
    manifest = write_artifact(onnx_path, path, bits=bits, layers=layers, info=info)
    log.info("QAT artifact: %s bytes (bound %.0f)", manifest["size_bytes"], _bound(manifest))
    return QuantizeResult(
        "qat", result.status, result.message, onnx_path, path, manifest, None, spec, dataset,
        model, result,
    )  # fmt: skip


def _artifact_info(
    model: nn.Module,
    spec: InputSpec,
    dataset: SceneDataset,
    name: str,
    method: str,
    config: PTQConfig | QATConfig,
) -> dict[str, Any]:
    return artifact_info(
        name,
        list(dataset.classes),
        spec,
        dataset.image_size,
        params=count_params(model),
        macs=count_macs(model.eval(), spec.size or dataset.image_size),
        recipe={"stage": "quantize", "method": method, method: config.to_dict()},
        **dataset_info(dataset),
    )


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
    spec = InputSpec.from_dict(manifest.get("input_spec") or manifest["metadata"]["input_spec"])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = artifact.save_onnx(Path(tmp) / "artifact.onnx")
        return evaluate_onnx(
            onnx_path,
            dataset,
            spec,
            model_name=str(manifest.get("model", manifest["metadata"].get("model", "model"))),
            params=int(manifest.get("params", manifest["stats"]["params"])),
            macs=int(manifest.get("macs", 0)),
            recipe=manifest.get("recipe", {}),
            split=split,
            run_dir=run_dir,
            latency=latency,
            size_bytes=artifact.size_bytes,
            file_format=artifact_format(manifest),
            extra={
                "bound_bytes": artifact.bound_bytes,
                "artifact": {"path": str(path), "stats": manifest["stats"]},
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


def _record_extra(result: QuantizeResult, fake_quant: float | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"status": result.status}
    if result.message:
        extra["message"] = result.message
    if fake_quant is not None:
        extra["pytorch_accuracy"] = fake_quant
    if result.qat is not None and result.qat.train is not None:
        extra["train"] = result.qat.train.summary
    if result.qat is not None:
        extra["layer_bits"] = result.qat.layer_bits
    return extra


def _save_settings(
    run_dir: Path, result: QuantizeResult, config: PTQConfig | QATConfig, trained: TrainedModel
) -> None:
    settings = {
        "method": result.method,
        "config": config.to_dict(),
        "checkpoint": str(trained.weights_path),
        "status": result.status,
        "artifact": str(result.artifact_path),
        "onnx": str(result.onnx_path),
    }
    atomic_write_bytes(run_dir / SETTINGS_FILE, yaml.safe_dump(settings, sort_keys=False).encode())


def _bound(manifest: dict[str, Any]) -> float:
    return float(np.float64(manifest["stats"]["bound_bytes"]))
