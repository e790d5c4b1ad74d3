"""The quantize stage: PTQ or QAT of any unquantized stage output, ending in a ``.satc``.

``PTQConfig``: static int8 (or dynamic for transformers) with ONNX Runtime on the exported
graph, calibrated on train images. ``QATConfig``: Brevitas QAT at ``config.bits`` (per layer
with ``bits_map``) through the training loop, exported as an int8 QDQ graph whose low-bit
weights the artifact packs. The record (``run_dir/record.json``) measures the ONNX model
rebuilt from the artifact in ONNX Runtime; ``size_bytes`` is the artifact's size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from satcompress.checkpoint import TrainedModel, read_card
from satcompress.compress.quantize.config import PTQConfig, QATConfig
from satcompress.compress.quantize.export import export_qat_onnx, to_fake_quant_module
from satcompress.compress.quantize.ptq import calibration_images, quantize_onnx
from satcompress.compress.quantize.qat import QATResult, qat
from satcompress.config import ConfigError
from satcompress.data import SceneDataset
from satcompress.evaluate import LatencyConfig
from satcompress.evaluate.artifact import evaluate_artifact, pytorch_accuracy
from satcompress.evaluate.evaluate import DEFAULT_LATENCY
from satcompress.models.deployable import export_onnx
from satcompress.models.stats import count_macs, count_params
from satcompress.pipeline.data import dataset_for
from satcompress.pipeline.load import ARTIFACT_NAME, QAT_SETTINGS
from satcompress.pipeline.result import StageResult
from satcompress.pipeline.stages import Source, _files, _torch_source, build_artifact, finish_card
from satcompress.train import TrainConfig
from satcompress.utils.io import atomic_write_bytes
from satcompress.utils.lock import holds_run_lock

__all__ = ["SETTINGS_FILE", "export_qat", "quantize"]

SETTINGS_FILE = "quantize.yaml"


@holds_run_lock
def quantize(
    source: Source,
    dataset: SceneDataset | None,
    config: PTQConfig | QATConfig,
    run_dir: str | Path,
    *,
    train_config: TrainConfig | None = None,
    evaluate_model: bool = True,
    split: str = "test",
    latency: LatencyConfig | None = DEFAULT_LATENCY,
    check_agreement: bool = True,
    resume: bool = False,
    progress: bool = True,
) -> StageResult:
    """Quantize a model and write its deployable artifact (``run_dir/model.satc``).

    Args:
        source: Any unquantized stage output (run directory, weights file, ``TrainedModel``,
            ``StageResult``), pruned ones included.
        dataset: The dataset (default: the one the source's card names).
        config: A :class:`PTQConfig` or :class:`QATConfig`: the method follows its type.
        run_dir: Output folder.
        train_config: QAT training settings (default: derived from the card's recipe).
        evaluate_model: Score the artifact on ``split`` and write ``record.json``.
        split: The split to score.
        latency: How to time the artifact; None skips timing.
        check_agreement: Also score the PyTorch fake-quant model (QAT) and store it as
            ``pytorch_accuracy`` next to the artifact's accuracy.
        resume: Continue an interrupted QAT run from its last checkpoint.
        progress: Show progress bars.

    Returns:
        A :class:`StageResult`; ``details`` holds the :class:`QATResult` for QAT, and
        ``record["status"]`` is ``diverged`` when QAT hit a NaN/inf loss.

    Raises:
        ConfigError: For another config type, or a source that is already quantized.
    """
    if not isinstance(config, (PTQConfig, QATConfig)):
        raise ConfigError(f"quantize takes a PTQConfig or QATConfig, got {type(config).__name__}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trained = _torch_source(source, "quantize")
    dataset = dataset_for(trained.card, dataset, where=trained.weights_path, progress=progress)
    if isinstance(config, PTQConfig):
        result = _ptq(trained, config, run_dir, dataset)
    else:
        result = _qat(trained, config, run_dir, dataset, train_config, resume, progress)
    _save_settings(run_dir, result, config, trained)
    if evaluate_model:
        fake_quant = None
        if check_agreement and isinstance(result.details, QATResult):
            fake_quant = pytorch_accuracy(result.model, result.input_spec, dataset, split)
        result.record = evaluate_artifact(
            result.files["artifact"], dataset, split=split, run_dir=run_dir, latency=latency,
            extra=_record_extra(result, fake_quant), progress=progress,
        )  # fmt: skip
    return result


def export_qat(
    trained: TrainedModel,
    card: dict[str, Any],
    output: Path,
    *,
    compress: bool = True,
    onnx_path: Path | None = None,
) -> dict[str, Any]:
    """Write the artifact of a fake-quantized (QAT) model at its per-layer bits.

    ``trained.weights_path`` must lie in the QAT run directory (its ``qat.yaml`` gives the
    layer bits); ``onnx_path`` keeps the QDQ graph the artifact was packed from.
    """
    settings = yaml.safe_load((Path(trained.weights_path).parent / QAT_SETTINGS).read_text())
    spec, model = trained.input_spec, trained.model
    image_size = tuple(card.get("image_size") or settings["source"]["image_size"])
    meta = {"model": card.get("model"), "classes": card.get("classes")}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, bits, layers = export_qat_onnx(
            model, spec, image_size, onnx_path or Path(tmp) / "qat.onnx", settings["layer_bits"],
            meta,
        )  # fmt: skip
        probe = torch.zeros(2, 3, *(spec.size or image_size))
        plain = to_fake_quant_module(model, probe)  # Brevitas layers defeat FlopCounterMode
        return build_artifact(
            onnx_path, card, output,
            params=sum(p.numel() for n, p in model.named_parameters() if "_quant." not in n),
            macs=count_macs(plain, spec.size or image_size), bits=bits, layers=layers,
            compress=compress,
        )  # fmt: skip


def _ptq(
    trained: TrainedModel, config: PTQConfig, run_dir: Path, dataset: SceneDataset
) -> StageResult:
    name = trained.card.get("model", type(trained.model).__name__)
    meta = {"model": name, "classes": list(dataset.classes)}
    fp32 = export_onnx(
        trained.model, trained.input_spec, dataset.image_size, run_dir / "model_fp32.onnx", meta
    )
    images = calibration_images(dataset, config.calibration_images, config.seed)
    int8 = quantize_onnx(fp32, run_dir / "model_int8.onnx", images, config)
    written = {
        **trained.card,
        "model": name,
        "classes": list(dataset.classes),
        "input": trained.input_spec.to_dict(),
        "image_size": list(dataset.image_size),
        "recipe": {"stage": "quantize", "method": "ptq", "ptq": config.to_dict()},
    }
    card = finish_card(run_dir, trained.card, "quantize", config, dataset, written)
    spec_size = trained.input_spec.size or dataset.image_size
    build_artifact(int8, card, run_dir / ARTIFACT_NAME, params=count_params(trained.model),
                   macs=count_macs(trained.model.eval(), spec_size))  # fmt: skip
    files = {**_files(run_dir), "onnx": int8}
    return StageResult("quantize", None, card, run_dir, trained.input_spec, None, files, dataset)


def _qat(
    trained: TrainedModel,
    config: QATConfig,
    run_dir: Path,
    dataset: SceneDataset,
    train_config: TrainConfig | None,
    resume: bool,
    progress: bool,
) -> StageResult:
    result = qat(
        trained, config, run_dir, train_config=train_config, dataset=dataset, resume=resume,
        progress=progress,
    )  # fmt: skip
    written = read_card(run_dir)
    written["recipe"] = {"stage": "quantize", "method": "qat", "qat": config.to_dict(),
                         "train": result.train_config.to_dict()}  # fmt: skip
    card = finish_card(
        run_dir, trained.card, "quantize", config, dataset, written,
        seed=result.train_config.seed, extra_configs={"train": result.train_config},
    )  # fmt: skip
    qat_model = TrainedModel(result.model, result.input_spec, card, run_dir / "model.safetensors",
                             "qat")  # fmt: skip
    export_qat(qat_model, card, run_dir / ARTIFACT_NAME, onnx_path=run_dir / "model_qdq.onnx")
    files = {**_files(run_dir), "onnx": run_dir / "model_qdq.onnx"}
    return StageResult(
        "quantize", result.model, card, run_dir, result.input_spec, None, files, dataset, result
    )


def _record_extra(result: StageResult, fake_quant: float | None) -> dict[str, Any]:
    details = result.details
    extra: dict[str, Any] = {"status": "ok"}
    if isinstance(details, QATResult):
        extra["status"] = details.status
        if details.message:
            extra["message"] = details.message
        if details.train is not None:
            extra["train"] = details.train.summary
        extra["layer_bits"] = details.layer_bits
    if fake_quant is not None:
        extra["pytorch_accuracy"] = fake_quant
    return extra


def _save_settings(
    run_dir: Path, result: StageResult, config: PTQConfig | QATConfig, trained: TrainedModel
) -> None:
    details = result.details
    settings = {
        "method": "qat" if isinstance(config, QATConfig) else "ptq",
        "config": config.to_dict(),
        "checkpoint": str(trained.weights_path),
        "status": details.status if isinstance(details, QATResult) else "ok",
        "artifact": str(result.files["artifact"]),
        "onnx": str(result.files.get("onnx", "")),
    }
    atomic_write_bytes(run_dir / SETTINGS_FILE, yaml.safe_dump(settings, sort_keys=False).encode())
