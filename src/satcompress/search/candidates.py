"""Steps 3 of BAIC: apply a plan, fine-tune it with distillation, write and measure its file.

A candidate is plain data (:class:`CandidateJob`), so it runs the same in this process, in
worker processes (``concurrent.futures`` with the ``spawn`` start method: each worker loads
the model and data itself) or as a Ray task; :func:`run_candidates` picks the executor and
hands every finished record to a callback as it completes, which appends it to
``candidates.jsonl`` (:class:`CandidateLog`), so an interrupted search loses nothing finished.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from satcompress.artifact.encode import encode
from satcompress.artifact.manifest import artifact_info
from satcompress.card import DataSource, derive_card
from satcompress.checkpoint import TrainedModel
from satcompress.compress.plan import CompressionPlan, apply_plan
from satcompress.config import ConfigError
from satcompress.data import SceneDataset
from satcompress.evaluate.artifact import evaluate_artifact
from satcompress.evaluate.profile import LatencyConfig
from satcompress.models.stats import count_macs, count_params
from satcompress.utils.executors import task_pool, threads_per_worker
from satcompress.utils.io import read_jsonl

log = logging.getLogger(__name__)

__all__ = [
    "CandidateJob",
    "CandidateLog",
    "manifest_estimate",
    "run_candidate",
    "run_candidates",
    "set_context",
]

CANDIDATE_ARTIFACT = "model.satc"
#: A fine-tune whose loss diverges is run once more with its learning rate scaled by this.
RETRY_LR_SCALE = 0.1
LATENCY = LatencyConfig(batch_sizes=(1,), warmup=5, runs=30)

# Loaded model, dataset and teacher per source, so that serial candidates load them once.
_CONTEXT: dict[str, tuple[TrainedModel, SceneDataset, Any]] = {}


@dataclasses.dataclass
class CandidateJob:
    """One plan to fine-tune and measure (plain data: it crosses process boundaries).

    Attributes:
        id: Unique name (``baic-1``, ``uniform``, ``final``...); its folder under ``run_dir``.
        kind: ``baic``, ``greedy``, ``uniform`` or ``final``.
        label: Short human description of the plan.
        plan: The :class:`CompressionPlan` as a dict.
        source: Path of the float model (run directory or weights file).
        run_dir: Folder of this candidate (its training run and its artifact).
        config: The :class:`~satcompress.search.config.BAICConfig` as a dict.
        epochs: Fine-tuning epochs (0: calibrate only).
        batches: At most this many batches per epoch (None: all).
        split: Split the file's accuracy is measured on (``val`` for candidates).
        latency: Time the file at batch 1.
        predicted_bytes: The plan's predicted file size.
        predicted_cost: The allocator's predicted accuracy cost.
        budget_bytes: The budget the file must fit.
        threads: Torch threads of the fine-tune (None: leave as is).
    """

    id: str
    kind: str
    label: str
    plan: dict[str, Any]
    source: str
    run_dir: str
    config: dict[str, Any]
    epochs: int
    batches: int | None
    split: str = "val"
    latency: bool = False
    predicted_bytes: int | None = None
    predicted_cost: float | None = None
    budget_bytes: int | None = None
    threads: int | None = None


class CandidateLog:
    """``candidates.jsonl``: one JSON line per finished candidate, appended durably.

    Each line is written with one ``write`` of a complete line, flushed and fsynced; a torn
    last line (a crash mid-write) is ignored when reading.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in order (a torn last line is skipped)."""
        return read_jsonl(self.path)

    def done(self) -> dict[str, dict[str, Any]]:
        """Finished records by candidate id (the last one wins)."""
        return {record["id"]: record for record in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        """Add one record durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def set_context(source: str, trained: TrainedModel, dataset: SceneDataset, teacher: Any) -> None:
    """Give this process's candidates an already loaded model, dataset and teacher."""
    _CONTEXT[source] = (trained, dataset, teacher)


def run_candidate(job: CandidateJob) -> dict[str, Any]:
    """Apply, fine-tune, encode, write and measure one candidate; return its record.

    The record has the job's fields plus ``bytes`` (file on disk), ``accuracy`` (on
    ``job.split``, in ONNX Runtime), ``latency_ms``, ``seconds``, ``status`` (``ok``,
    ``over-budget``) and ``artifact`` (path).
    """
    from satcompress.search.config import BAICConfig

    started = time.perf_counter()
    if job.threads:
        torch.set_num_threads(job.threads)
    trained, dataset, teacher = _context(job)
    config = BAICConfig.from_dict(job.config)
    run_dir = Path(job.run_dir)
    if run_dir.exists():  # an interrupted attempt: start this candidate over
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    plan = CompressionPlan.from_dict(job.plan)
    note = None
    try:
        model, train_config = _fine_tuned(job, config, plan, trained, dataset, teacher)
    except FloatingPointError as err:  # a plan that damages the model a lot can diverge
        note = f"{err}: retried at a tenth of the learning rate"
        log.warning("candidate %s: %s", job.id, note)
        shutil.rmtree(run_dir / "train", ignore_errors=True)
        model, train_config = _fine_tuned(
            job, config, plan, trained, dataset, teacher, lr_scale=RETRY_LR_SCALE
        )
    card = candidate_card(trained, dataset, config, plan, train_config)
    path = _write(model, trained, dataset, card, run_dir / CANDIDATE_ARTIFACT, config.lzma)
    size = path.stat().st_size
    record = _record(job, size)
    if note:
        record["note"] = note
    if job.budget_bytes is not None and size > job.budget_bytes:
        record["status"] = "over-budget"
    measured = evaluate_artifact(
        path, dataset, split=job.split, latency=LATENCY if job.latency else None, progress=False
    )
    record["accuracy"] = float(measured["accuracy"])
    record["latency_ms"] = _bs1(measured)
    record["seconds"] = round(time.perf_counter() - started, 2)
    shutil.rmtree(run_dir / "train" / "checkpoints", ignore_errors=True)  # ~100 MB each
    return record


def candidate_card(
    trained: TrainedModel, dataset: SceneDataset, config: Any, plan: CompressionPlan, train: Any
) -> dict[str, Any]:
    """The card of a candidate's file: the input's, with this stage, its plan and fine-tune."""
    return derive_card(
        trained.card,
        "baic",
        config,
        data=DataSource.of(dataset, config.seed),
        extra_configs={"plan": plan.to_dict(), "train": train},
        input=trained.input_spec.to_dict(),
        image_size=list(dataset.image_size),
        classes=list(dataset.classes),
        num_classes=len(dataset.classes),
    )


def manifest_estimate(
    trained: TrainedModel, dataset: SceneDataset, config: Any, layers: Iterable[str]
) -> dict[str, Any]:
    """The manifest description of a candidate's file, near its real size (before any plan).

    A candidate's card carries its plan and fine-tuning settings in its lineage: this one has
    a plan naming every layer, so the byte predictor counts about the bytes the real one will.
    """
    from satcompress.compress.plan import LayerPlan
    from satcompress.compress.quantize.config import QATConfig
    from satcompress.compress.quantize.qat import qat_train_config

    plan = CompressionPlan({name: LayerPlan(bits=8, channel_ratio=0.25) for name in layers})
    train_config = qat_train_config(trained.card, QATConfig(), trained.input_spec)
    card = candidate_card(trained, dataset, config, plan, train_config)
    return artifact_info(card, params=count_params(trained.model), macs=10**9)


def _record(job: CandidateJob, size: int) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "label": job.label,
        "plan": job.plan,
        "source": job.source,
        "predicted_bytes": job.predicted_bytes,
        "predicted_cost": job.predicted_cost,
        "bytes": size,
        "split": job.split,
        "epochs": job.epochs,
        "batches": job.batches,
        "artifact": str(Path(job.run_dir) / CANDIDATE_ARTIFACT),
        "status": "ok",
    }


def _bs1(measured: dict[str, Any]) -> float | None:
    timing = measured.get("latency_ms") or {}
    entry = timing.get("bs1") if isinstance(timing, dict) else None
    if isinstance(entry, dict):
        return float(entry.get("median_ms"))
    return float(entry) if isinstance(entry, (int, float)) else None


def _context(job: CandidateJob) -> tuple[TrainedModel, SceneDataset, Any]:
    if job.source not in _CONTEXT:
        from satcompress.compress.distill.teacher import load_teacher
        from satcompress.pipeline.data import dataset_for
        from satcompress.pipeline.load import load

        trained = load(job.source)
        dataset = dataset_for(trained.card, where=job.source, progress=False)
        teacher_source = job.config.get("teacher", "self")
        teacher = load_teacher(  # a copy: load_teacher freezes the model it is given
            copy.deepcopy(trained) if teacher_source == "self" else teacher_source,
            num_classes=len(dataset.classes),
        )
        _CONTEXT[job.source] = (trained, dataset, teacher)
    return _CONTEXT[job.source]


def _fine_tuned(
    job: CandidateJob,
    config: Any,
    plan: CompressionPlan,
    trained: TrainedModel,
    dataset: SceneDataset,
    teacher: Any,
    lr_scale: float = 1.0,
) -> tuple[torch.nn.Module, Any]:
    """The plan applied to the input model and fine-tuned with distillation from the teacher.

    Raises:
        FloatingPointError: If the fine-tune's loss diverges (NaN or infinite).
    """
    import lightning as L

    from satcompress.compress.distill.loss import DistillationLoss
    from satcompress.compress.quantize.config import QATConfig
    from satcompress.compress.quantize.qat import calibration_batches, qat_train_config
    from satcompress.train import train

    spec = trained.input_spec
    size = spec.size or dataset.image_size
    L.seed_everything(config.seed, workers=True, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = apply_plan(
            trained.model, plan, torch.zeros(2, 3, *size), calibration_batches(dataset, spec, 64)
        )
    model.requires_grad_(True)  # the input model may be frozen (it can be its own teacher)
    overrides: dict[str, Any] = {"limit_batches": job.batches, "seed": config.seed}
    if config.batch_size:
        overrides["batch_size"] = config.batch_size
    qat = QATConfig(epochs=max(1, job.epochs), lr=config.lr)
    train_config = qat_train_config(trained.card, qat, spec, overrides)
    if lr_scale != 1.0:
        train_config = train_config.replace(lr=train_config.lr * lr_scale)
    if job.epochs == 0:
        return model.eval(), None
    layer_bits = dict(model.layer_bits)
    loss = DistillationLoss(
        teacher.model,
        teacher.input_spec,
        config.distill,
        label_smoothing=train_config.label_smoothing,
        student=model,
        student_spec=spec,
        image_size=dataset.image_size,
        channels_last=train_config.channels_last,
        augment=train_config.augment,
    )
    model.train()
    try:
        result = train(
            train_config,
            Path(job.run_dir) / "train",
            model=model,
            dataset=dataset,
            loss=loss,
            progress=False,
        )
    finally:
        loss.remove_hooks()
    model = result.model.eval()
    model.layer_bits = layer_bits
    return model, train_config


def _write(
    model: torch.nn.Module,
    trained: TrainedModel,
    dataset: SceneDataset,
    card: dict[str, Any],
    path: Path,
    lzma: bool,
) -> Path:
    """Encode the fine-tuned model as a ``.satc`` with its card; the file's path."""
    spec = trained.input_spec
    size = spec.size or dataset.image_size
    info = artifact_info(card, params=_params(model), macs=_macs(model, tuple(size)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        encoded = encode(
            model,
            spec,
            tuple(dataset.image_size),
            info=info,
            layer_bits=getattr(model, "layer_bits", None),
            compress=lzma,
        )
    return Path(encoded.write(path))


def _params(model: torch.nn.Module) -> int:
    """Weights and biases, without the quantizers' own parameters."""
    return sum(p.numel() for n, p in model.named_parameters() if "_quant." not in n)


def _macs(model: torch.nn.Module, size: tuple[int, int]) -> int:
    from satcompress.compress.quantize.export import to_fake_quant_module
    from satcompress.compress.quantize.qat import quant_layers

    if quant_layers(model):  # Brevitas layers defeat FlopCounterMode
        model = to_fake_quant_module(model, torch.zeros(2, 3, *size))
    return count_macs(model, size)


# --- executors ----------------------------------------------------------------------------------


def run_candidates(
    jobs: Iterable[CandidateJob],
    on_done: Callable[[dict[str, Any]], None],
    *,
    workers: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
) -> list[dict[str, Any]]:
    """Run independent candidates, handing each record to ``on_done`` as soon as it finishes.

    Args:
        jobs: The candidates.
        on_done: Called in this process with every finished record (in completion order).
        workers: Candidates at once: 1 runs them here, one after the other; more uses
            worker processes (or Ray tasks), each with ``cores // workers`` torch threads.
        executor: ``local`` or ``ray``.
        ray_address: Ray cluster address (None: a local Ray runtime).

    Returns:
        The records in completion order. A failing candidate gets ``status: failed`` and its
        error text instead of stopping the others.
    """
    jobs = {job.id: job for job in jobs}
    records: list[dict[str, Any]] = []
    kind = "ray" if executor == "ray" else "serial" if workers <= 1 or len(jobs) <= 1 else "process"
    threads = threads_per_worker(workers) if kind != "serial" else None
    try:
        with task_pool(kind, workers, ray_address=ray_address) as pool:
            for job in jobs.values():
                pool.submit(
                    job.id, _guarded, dataclasses.replace(job, threads=threads or job.threads)
                )
            while pool.pending:
                done = pool.next_done()
                if done.error is not None and kind == "serial":
                    raise done.error  # here, as before: only run_candidate's own errors fail
                job = jobs[done.name]
                record = done.result if done.error is None else _failed(job, done.error)
                records.append(record)
                on_done(record)
    except ImportError as err:
        raise ConfigError(f"{err} (or use --workers N)") from err
    return records


def _guarded(job: CandidateJob) -> dict[str, Any]:
    try:
        return run_candidate(job)
    except (ValueError, RuntimeError, FloatingPointError) as err:
        log.error("candidate %s failed: %s", job.id, err)
        return _failed(job, err)


def _failed(job: CandidateJob, err: BaseException) -> dict[str, Any]:
    record = _record(job, 0)
    record.update(bytes=None, status="failed", error=f"{type(err).__name__}: {err}")
    return record
