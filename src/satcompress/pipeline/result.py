"""What every stage returns: the model, its card, its record and the files it wrote."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from satcompress.data import SceneDataset
from satcompress.preprocess import InputSpec

__all__ = ["StageResult"]


@dataclasses.dataclass
class StageResult:
    """The output of one stage, and a valid source of the next.

    Attributes:
        stage: ``train``, ``distill``, ``prune``, ``quantize``, ``export`` or ``evaluate``.
        model: The stage's model: an ``nn.Module`` (fake-quantized after QAT), or the
            :class:`~satcompress.artifact.format.Artifact` of an export or PTQ.
        card: Its model card (lineage included), as written to the run directory.
        run_dir: Where the stage wrote its files (the next stage's ``--checkpoint``).
        input_spec: The model's input resolution and normalisation.
        record: The evaluation record (None when the stage did not evaluate). Its
            ``size_bytes`` is always the bytes of the deployable file the stage leaves, and
            its ``format`` says which file that is: ``onnx-fp32``, the plain fp32 ONNX file
            (train, distill, and eval of a PyTorch model), or ``artifact-<bits>``
            (``artifact-fp32``, ``artifact-int8``, ``artifact-int4-mixed``, ...), the
            ``.satc`` artifact (prune, quantize, and eval of an artifact), which
            :func:`~satcompress.pipeline.stages.build_artifact` builds through
            :func:`satcompress.artifact.encode.encode`. Where an artifact is measured,
            ``onnx_bytes`` may keep the plain ONNX file's size for comparison.
        files: What the stage wrote, by role (``weights``, ``card``, ``artifact``, ...).
        dataset: The dataset the stage used (None for ``export``).
        details: The stage's own result (e.g. the pruning summary, the QAT result).
    """

    stage: str
    model: Any
    card: dict[str, Any]
    run_dir: Path
    input_spec: InputSpec
    record: dict[str, Any] | None = None
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    dataset: SceneDataset | None = None
    details: Any = None

    @property
    def size_bytes(self) -> int | None:
        """Bytes of the deployable file the record measured (None without a record)."""
        return None if self.record is None else int(self.record["size_bytes"])

    @property
    def weights_path(self) -> Path | None:
        """The weights file (None for artifacts)."""
        return self.files.get("weights")
