"""One stage shape: ``stage(source, dataset, config, run_dir) -> StageResult``, any order.

Every stage takes the previous stage's output (a run directory, weights file, ``.satc``,
``TrainedModel`` or :class:`StageResult`), a dataset or None (then the source card's data,
see :func:`~satcompress.pipeline.data.dataset_for`), its config and a run directory; it
writes the model, its card with one more lineage entry, and its record, and returns a
:class:`StageResult`. :func:`run` dispatches on the config's type, as torchao's
``quantize_(model, config)`` does::

    result = run(TrainConfig(model="resnet18", dataset="eurosat", data_dir="data"), None, None, "r")
    result = run(PruneConfig(method="l1", ratio=0.5), result, None, "r_pruned")
    result = run(QATConfig(bits=4), result, None, "r_q4")
    result = run(EvalConfig(), result, None, "r_q4_eval")
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from satcompress.artifact import ARTIFACT_SUFFIX
from satcompress.artifact.encode import encode
from satcompress.artifact.format import artifact_format, load_artifact
from satcompress.artifact.manifest import artifact_info
from satcompress.card import CARD_FILE, DataSource, derive_card
from satcompress.checkpoint import TrainedModel
from satcompress.compress.distill import DistillConfig
from satcompress.compress.prune.config import PruneConfig
from satcompress.compress.quantize.config import PTQConfig, QATConfig
from satcompress.config import Config, ConfigError
from satcompress.data import SceneDataset
from satcompress.evaluate import LatencyConfig
from satcompress.evaluate.evaluate import DEFAULT_LATENCY, evaluate
from satcompress.models.stats import count_macs, count_params
from satcompress.pipeline.data import DataOverrides, dataset_for
from satcompress.pipeline.load import ARTIFACT_NAME, load
from satcompress.pipeline.result import StageResult
from satcompress.train.config import TrainConfig
from satcompress.utils.io import atomic_write_json
from satcompress.utils.lock import holds_run_lock, run_lock

log = logging.getLogger(__name__)

__all__ = [
    "EvalConfig",
    "ExportConfig",
    "STAGES",
    "Source",
    "build_artifact",
    "distill",
    "evaluate_stage",
    "export",
    "finish_card",
    "prune",
    "run",
    "train",
]

#: What a stage accepts as its input model.
Source = str | Path | TrainedModel | StageResult

# Card fields a stage's own card (written by the technique) passes on to the final card.
_CARRIED = (
    "model", "model_kwargs", "num_classes", "classes", "input", "image_size", "split_source",
    "split_fingerprint", "recipe", "pruning", "weights_sha256", "val_accuracy", "qat_status",
    "qat_message", "initial_weights",
)  # fmt: skip


@dataclasses.dataclass
class EvalConfig(Config):
    """How a model is scored: accuracy on a split, latency in ONNX Runtime.

    Attributes:
        split: The split to score: ``train``, ``val`` or ``test``.
        latency: Time the file at batch 1 and 64.
        threads: ONNX Runtime intra-op threads (None: all cores).
    """

    split: str = "test"
    latency: bool = True
    threads: int | None = None

    def validate(self) -> None:
        """Check the split and thread count."""
        if self.split not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test; got {self.split!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer; got {self.threads!r}")

    def latency_config(self) -> LatencyConfig | None:
        """The latency settings, or None to skip timing."""
        return LatencyConfig(threads=self.threads) if self.latency else None


@dataclasses.dataclass
class ExportConfig(Config):
    """How the deployable ``.satc`` file is written.

    Attributes:
        output: The artifact's path (default: ``<run_dir>/model.satc``).
        compress: Allow LZMA over the stored streams.
    """

    output: str | None = None
    compress: bool = True


def finish_card(
    run_dir: Path,
    parent: dict[str, Any] | None,
    stage: str,
    config: Any,
    dataset: SceneDataset,
    written: dict[str, Any],
    *,
    seed: int = 0,
    extra_configs: dict[str, Any] | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """The card of a stage's output (the input's lineage + this stage), written to the run.

    Args:
        run_dir: The stage's run directory (``model.json`` is written there if ``save``).
        parent: The input model's card (None: trained from scratch).
        stage: The stage's name.
        config: The stage's config.
        dataset: The data the stage used.
        written: The card the technique wrote (model, classes, pruning, weights hash...).
        seed: Seed of a generated split.
        extra_configs: Further configs of the stage by role (``train`` for fine-tuning).
        save: Write ``run_dir/model.json``.
    """
    fields = {k: written[k] for k in _CARRIED if k in written}
    card = derive_card(
        parent,
        stage,
        config,
        data=DataSource.of(dataset, seed),
        extra_configs=extra_configs,
        **fields,
    )
    if save:
        atomic_write_json(run_dir / CARD_FILE, card)
    return card


def build_artifact(
    onnx_model: Any,
    card: dict[str, Any],
    path: Path,
    *,
    params: int,
    macs: int,
    bits: dict[str, int] | None = None,
    layers: dict[str, str] | None = None,
    compress: bool = True,
) -> dict[str, Any]:
    """Write the deployable ``.satc`` of an ONNX graph with its card: the one place that does.

    The file is built in memory by :func:`satcompress.artifact.encode.encode` (the encoder
    whose size :func:`~satcompress.artifact.encode.predict_bytes` predicts), then written.

    Args:
        onnx_model: The graph (``ModelProto`` or file): fp32, PTQ's QDQ or QAT's QDQ.
        card: The model's card (embedded in the manifest with ``params`` and ``macs``).
        path: The ``.satc`` file to write.
        params: Parameter count of the model.
        macs: Multiply-accumulates per image.
        bits: Bit-width of ``int8`` initializers by name (QAT's low-bit weights).
        layers: The model layer of each initializer.
        compress: Allow LZMA per stored stream where it is smaller. The stages keep the
            default (True, as every committed ``size_bytes`` was measured); ``encode``'s own
            default is False (exactly predictable sizes).

    Returns:
        The manifest written, with ``size_bytes``: the bytes of the file on disk.
    """
    info = artifact_info(card, params=params, macs=macs)
    encoded = encode(onnx_model, bits=bits, layers=layers, info=info, compress=compress)
    encoded.write(path)
    log.info("artifact %s: %s bytes", path, encoded.size_bytes)
    return {**encoded.manifest, "size_bytes": encoded.size_bytes}


@holds_run_lock
def train(
    source: Source | None,
    dataset: SceneDataset | None,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    evaluate_model: bool = True,
    split: str = "test",
    latency: LatencyConfig | None = DEFAULT_LATENCY,
    progress: bool = True,
) -> StageResult:
    """Train ``config.model`` from scratch (``source`` None) or fine-tune ``source``'s model.

    The record measures the fp32 ONNX file (``format`` ``onnx-fp32``).
    """
    from satcompress.train import train as train_model

    run_dir = Path(run_dir)
    config = config.with_absolute_paths()  # the card and record name the data from anywhere
    parent = load(source) if source is not None else None
    dataset = dataset or _training_data(config, parent, progress)
    model = parent.model if parent is not None else None
    result = train_model(
        config, run_dir, model=model, dataset=dataset, resume=resume, progress=progress
    )
    return _trained(
        "train", result, parent, config, dataset, run_dir, config, evaluate_model, split, latency,
        progress,
    )  # fmt: skip


@holds_run_lock
def distill(
    source: Source,
    dataset: SceneDataset | None,
    config: DistillConfig,
    run_dir: str | Path,
    *,
    train_config: TrainConfig,
    teacher_weights: str | Path | None = None,
    resume: bool = False,
    evaluate_model: bool = True,
    split: str = "test",
    latency: LatencyConfig | None = DEFAULT_LATENCY,
    progress: bool = True,
) -> StageResult:
    """Train ``train_config.model`` as a student of the teacher ``source``."""
    from satcompress.compress.distill import distill as distill_model

    run_dir = Path(run_dir)
    train_config = train_config.with_absolute_paths()
    teacher = load(source) if not isinstance(source, str) or Path(source).exists() else None
    dataset = dataset or _training_data(train_config, teacher, progress)
    result = distill_model(
        train_config, config, teacher if teacher is not None else source, run_dir,
        teacher_weights=teacher_weights, dataset=dataset, resume=resume, progress=progress,
    )  # fmt: skip
    return _trained(
        "distill", result, teacher, config, dataset, run_dir, train_config, evaluate_model, split,
        latency, progress,
    )  # fmt: skip


def _training_data(
    config: TrainConfig, source: TrainedModel | None, progress: bool
) -> SceneDataset:
    """The data a training stage uses: its config's, else the data its source model knows."""
    from satcompress.train import load_config_dataset

    if source is not None and not config.data_dir:
        return dataset_for(source.card, where=source.weights_path, progress=progress)
    return load_config_dataset(config, progress)


def _trained(
    stage: str,
    result: Any,
    parent: TrainedModel | None,
    config: Config,
    dataset: SceneDataset,
    run_dir: Path,
    train_config: TrainConfig,
    evaluate_model: bool,
    split: str,
    latency: LatencyConfig | None,
    progress: bool,
) -> StageResult:
    """Card, record and result of a stage that trained through the training loop."""
    if not result.is_global_zero:  # the other processes of a multi-process run
        return StageResult(stage, result.model, result.card, run_dir, result.input_spec)
    extra = {"train": train_config} if train_config is not config else None
    card = finish_card(
        run_dir, parent.card if parent else None, stage, config, dataset, result.card,
        seed=train_config.seed, extra_configs=extra,
    )  # fmt: skip
    record = None
    if evaluate_model:
        record = _measure(result.model, result.input_spec, dataset, card, run_dir, split, latency,
                          {"train": result.summary}, progress)  # fmt: skip
    return StageResult(
        stage, result.model, card, run_dir, result.input_spec, record, _files(run_dir), dataset,
        result,
    )  # fmt: skip


@holds_run_lock
def prune(
    source: Source,
    dataset: SceneDataset | None,
    config: PruneConfig,
    run_dir: str | Path,
    *,
    train_config: TrainConfig | None = None,
    teacher: Any = None,
    teacher_weights: str | Path | None = None,
    distill_config: DistillConfig | None = None,
    evaluate_model: bool = True,
    split: str = "test",
    latency: LatencyConfig | None = DEFAULT_LATENCY,
    progress: bool = True,
    callbacks: list | None = None,
    input_spec: Any = None,
    card: dict[str, Any] | None = None,
) -> StageResult:
    """Prune, fine-tune, save; then measure the ONNX file and pack the ``.satc`` artifact.

    ``source`` may also be a plain ``nn.Module``; then give its ``input_spec`` (and its
    ``card``: registry name and builder arguments, to reload it by name).

    The record's ``size_bytes`` is the artifact's (``onnx_bytes`` keeps the fp32 ONNX
    file's): unstructured zeros cost only mask bits there.
    """
    from satcompress.compress.prune.api import prune as prune_model

    run_dir = Path(run_dir)
    if isinstance(source, nn.Module):
        if input_spec is None:
            raise ConfigError("prune of an nn.Module needs its input spec: input_spec=...")
        source = TrainedModel(source, input_spec, dict(card or {}), Path("<module>"))
    source_model = _torch_source(source, "prune")
    if input_spec is not None:
        source_model.input_spec = input_spec
    dataset = dataset_for(source_model.card, dataset, where=source_model.weights_path)
    result = prune_model(
        source_model, dataset, config, run_dir, train_config=train_config, teacher=teacher,
        teacher_weights=teacher_weights, distill_config=distill_config, progress=progress,
        callbacks=callbacks,
    )  # fmt: skip
    finetune = result.card.get("recipe", {}).get("finetune")
    card = finish_card(
        run_dir, source_model.card, "prune", config, dataset, result.card,
        extra_configs={"train": TrainConfig.from_dict(finetune) if finetune else None},
    )  # fmt: skip
    result.card = card
    files = _files(run_dir)
    if evaluate_model:
        record = _measure(result.model, result.input_spec, dataset, card, run_dir, split, latency,
                          {"pruning": result.summary}, progress)  # fmt: skip
        result.record = _with_artifact(record, card, run_dir)
        files["artifact"] = run_dir / ARTIFACT_NAME
    return StageResult(
        "prune", result.model, card, run_dir, result.input_spec, result.record, files,
        dataset, result,
    )  # fmt: skip


def export(
    source: Source,
    dataset: SceneDataset | None,
    config: ExportConfig,
    run_dir: str | Path | None = None,
) -> StageResult:
    """Write the deployable ``.satc`` of any stage's output (``dataset`` is not needed).

    A QAT model is exported at its bits, a PTQ run as its int8 graph, any other model as
    fp32 (unstructured zeros stored as mask bits); an artifact is written again. It holds
    the lock of ``run_dir`` (default: the source's run directory) while it writes.
    """
    model = load(source)
    if isinstance(source, (str, Path)) and Path(source).is_dir() and run_dir is None:
        run_dir = Path(source)
    run_dir = Path(run_dir or Path(model.weights_path).parent)
    output = Path(config.output) if config.output else run_dir / ARTIFACT_NAME
    card = derive_card(model.card, "export", config)
    with run_lock(run_dir):
        output.parent.mkdir(parents=True, exist_ok=True)
        manifest = _export_file(model, card, output, config.compress)
    return StageResult(
        "export", load_artifact(output), card, run_dir, model.input_spec,
        files={"artifact": output}, details=manifest,
    )  # fmt: skip


def _export_file(
    model: TrainedModel, card: dict[str, Any], output: Path, compress: bool
) -> dict[str, Any]:
    from satcompress.pipeline.quantize import export_qat

    if model.kind == "artifact":
        return build_artifact(model.model.onnx_model(), card, output,
                              params=int(model.model.manifest.get("params", 0)),
                              macs=int(model.model.manifest.get("macs", 0)),
                              compress=compress)  # fmt: skip
    if model.kind == "qat":
        return export_qat(model, card, output, compress=compress)
    return _export_fp32(model, card, output, compress)


@holds_run_lock
def evaluate_stage(
    source: Source,
    dataset: SceneDataset | None,
    config: EvalConfig,
    run_dir: str | Path | None = None,
    *,
    overrides: DataOverrides | None = None,
    progress: bool = True,
) -> StageResult:
    """Score any stage's output on its data, in ONNX Runtime.

    A PyTorch model is measured as its fp32 ONNX file, an artifact as the ONNX model rebuilt
    from it.
    """
    from satcompress.evaluate.artifact import evaluate_artifact

    model = load(source)
    dataset = dataset_for(model.card, dataset, overrides, where=model.weights_path,
                          progress=progress)  # fmt: skip
    run_dir = Path(run_dir) if run_dir is not None else None
    if model.kind == "artifact":
        record = evaluate_artifact(model.weights_path, dataset, split=config.split,
                                   run_dir=run_dir, latency=config.latency_config(),
                                   progress=progress)  # fmt: skip
    else:
        record = evaluate(
            model.model, dataset, model.input_spec,
            model_name=str(model.card.get("model", type(model.model).__name__)),
            recipe={"stage": "eval", "weights": str(model.weights_path),
                    **(model.card.get("recipe") or {})},
            split=config.split, run_dir=run_dir, latency=config.latency_config(),
            extra={"lineage": model.card.get("lineage", [])}, progress=progress,
        )  # fmt: skip
    return StageResult(
        "evaluate", model.model, model.card, run_dir or Path("."), model.input_spec, record,
        dataset=dataset,
    )  # fmt: skip


def _quantize(
    source: Source, dataset: SceneDataset | None, config: Any, run_dir: str | Path, **kw: Any
) -> StageResult:
    from satcompress.pipeline.quantize import quantize

    return quantize(source, dataset, config, run_dir, **kw)


#: The stage each config type runs (one dispatch, as torchao's ``quantize_`` has).
STAGES: dict[type[Config], Callable[..., StageResult]] = {
    TrainConfig: train,
    DistillConfig: distill,
    PruneConfig: prune,
    PTQConfig: _quantize,
    QATConfig: _quantize,
    ExportConfig: export,
    EvalConfig: evaluate_stage,
}


def run(
    config: Config,
    source: Source | None = None,
    dataset: SceneDataset | None = None,
    run_dir: str | Path | None = None,
    **options: Any,
) -> StageResult:
    """Run the stage ``config``'s type names on ``source`` (see :data:`STAGES`).

    Raises:
        ConfigError: For a config type no stage takes.
    """
    stage = STAGES.get(type(config))
    if stage is None:
        known = ", ".join(c.__name__ for c in STAGES)
        raise ConfigError(f"no stage takes a {type(config).__name__}; stages take: {known}")
    return stage(source, dataset, config, run_dir, **options)


def _torch_source(source: Source, stage: str) -> TrainedModel:
    model = load(source)
    if model.kind in ("artifact", "qat"):
        raise ConfigError(
            f"cannot {stage} {model.weights_path}: it is already quantized ({model.kind}); "
            f"{stage} the model it was quantized from, then quantize again"
        )
    return model


def _measure(
    model: Any,
    spec: Any,
    dataset: SceneDataset,
    card: dict[str, Any],
    run_dir: Path,
    split: str,
    latency: LatencyConfig | None,
    extra: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    return evaluate(
        model, dataset, spec, model_name=str(card.get("model")),
        recipe={"stage": card["lineage"][-1]["stage"], **(card.get("recipe") or {})},
        split=split, run_dir=run_dir, latency=latency,
        extra={**extra, "lineage": card.get("lineage", [])}, progress=progress,
    )  # fmt: skip


def _with_artifact(record: dict[str, Any], card: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Pack the evaluated ONNX file into the artifact, which the record then sizes.

    The artifact stores exactly the ONNX file's weights (each tensor's round trip is checked
    on writing), with the zeros of unstructured pruning as mask bits: the accuracy and
    latency measured on the ONNX file are the artifact's, and ``size_bytes`` becomes its
    bytes on disk (``onnx_bytes`` keeps the plain file's).
    """
    path = run_dir / ARTIFACT_NAME
    manifest = build_artifact(
        run_dir / "model.onnx", card, path, params=record["params"], macs=record["macs"]
    )
    record = {
        **record,
        "onnx_bytes": record["size_bytes"],
        "size_bytes": int(manifest["size_bytes"]),
        "format": artifact_format(manifest),
        "bound_bytes": float(manifest["stats"]["bound_bytes"]),
        "artifact": {"path": str(path), "stats": manifest["stats"]},
    }
    atomic_write_json(run_dir / "record.json", record)
    return record


def _export_fp32(
    model: TrainedModel, card: dict[str, Any], output: Path, compress: bool
) -> dict[str, Any]:
    import tempfile

    from satcompress.models.deployable import export_onnx

    size = card.get("image_size")
    if size is None:
        raise ConfigError(f"{model.weights_path}: its card gives no image size")
    size = tuple(size)
    meta = {"model": card.get("model"), "classes": card.get("classes")}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model.model, model.input_spec, size, Path(tmp) / "m.onnx", meta)
        return build_artifact(
            onnx_path, card, output, params=count_params(model.model),
            macs=count_macs(model.model, model.input_spec.size or size), compress=compress,
        )  # fmt: skip


def _files(run_dir: Path) -> dict[str, Path]:
    found = {
        "weights": run_dir / "model.safetensors",
        "card": run_dir / CARD_FILE,
        "onnx": run_dir / "model.onnx",
        "record": run_dir / "record.json",
        "artifact": run_dir / f"model{ARTIFACT_SUFFIX}",
    }
    return {role: path for role, path in found.items() if path.is_file()}
