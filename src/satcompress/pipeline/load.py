"""``load(path)``: any output of any stage, back as a model with its card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from satcompress.artifact import ARTIFACT_SUFFIX
from satcompress.artifact.format import load_artifact
from satcompress.artifact.manifest import manifest_card
from satcompress.checkpoint import TrainedModel, load_trained, read_card
from satcompress.pipeline.result import StageResult
from satcompress.preprocess import InputSpec

__all__ = ["ARTIFACT_NAME", "QAT_SETTINGS", "is_quantized", "load"]

ARTIFACT_NAME = f"model{ARTIFACT_SUFFIX}"
QAT_SETTINGS = "qat.yaml"  # = satcompress.compress.quantize.qat.QAT_FILE (Brevitas-free here)


def load(source: str | Path | TrainedModel | StageResult, **kwargs: Any) -> TrainedModel:
    """Load a model from wherever a stage left it, with its card.

    Args:
        source: A run directory (trained, distilled, pruned, QAT or PTQ), a weights file with
            its card, a ``.satc`` artifact, a :class:`StageResult` or a ``TrainedModel``.
        **kwargs: Passed to :func:`satcompress.checkpoint.load_trained` for weights files
            without a full card (``model_name``, ``num_classes``, ``input_spec``, ...).

    Returns:
        A :class:`~satcompress.checkpoint.TrainedModel` whose ``kind`` says what it is:
        ``weights``, ``pruned``, ``qat`` (the fake-quantized model) or ``artifact``.

    Raises:
        FileNotFoundError: If nothing loadable is at ``source``.
    """
    if isinstance(source, TrainedModel):
        return source
    if isinstance(source, StageResult):
        return _from_result(source)
    path = Path(source)
    if path.suffix == ARTIFACT_SUFFIX or _only_artifact(path):
        return _artifact(path if path.suffix == ARTIFACT_SUFFIX else path / ARTIFACT_NAME)
    if path.is_dir() and (path / QAT_SETTINGS).is_file():
        from satcompress.compress.quantize.qat import load_qat_model

        model, spec, _ = load_qat_model(path)
        return TrainedModel(model, spec, read_card(path), path / "model.safetensors", "qat")
    return load_trained(path, **kwargs)


def is_quantized(trained: TrainedModel) -> bool:
    """True for a QAT model or an artifact: quantizing it again is refused."""
    return trained.kind in ("qat", "artifact")


def _only_artifact(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / ARTIFACT_NAME).is_file()
        and not (path / "model.safetensors").is_file()
    )


def _artifact(path: Path) -> TrainedModel:
    artifact = load_artifact(path)
    card = manifest_card(artifact.manifest)
    return TrainedModel(
        artifact, InputSpec.from_dict(card.get("input") or {}), card, path, "artifact"
    )


def _from_result(result: StageResult) -> TrainedModel:
    if (
        "artifact" in result.files
        and result.stage in ("export", "quantize")
        and (result.weights_path is None)
    ):
        return _artifact(result.files["artifact"])
    kind = (
        "qat"
        if (result.run_dir / QAT_SETTINGS).is_file()
        else ("pruned" if result.card.get("pruning") else "weights")
    )
    path = result.weights_path or result.run_dir
    return TrainedModel(result.model, result.input_spec, result.card, path, kind)
