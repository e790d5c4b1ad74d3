"""``train()``: one call from a config to a trained model saved in a run directory."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from satcompress.card import CARD_FORMAT, DataSource, serialize_config
from satcompress.config import ConfigError
from satcompress.data import SceneDataModule, SceneDataset, load_dataset
from satcompress.models import model_info
from satcompress.models.weights import save_weights
from satcompress.preprocess import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from satcompress.train.checkpoint_io import (
    AtomicCheckpointIO,
    previous_path,
    remove_partial_writes,
    resume_checkpoint,
)
from satcompress.train.config import TrainConfig, absolute_path
from satcompress.train.initial import initial_model
from satcompress.train.task import ClassificationTask, TrainingLoss
from satcompress.utils.io import atomic_write_bytes, atomic_write_json, file_digest
from satcompress.utils.lock import holds_run_lock, secondary_rank

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: The trained model (best validation epoch; EMA weights when enabled).
        input_spec: Its input resolution and normalisation.
        run_dir: Where config, split files, checkpoints, weights and card were written.
        weights_path: The safetensors weights file.
        card: The model card (also saved as ``model.json``).
        summary: Timing and validation figures (also saved as ``train_summary.json``).
        dataset: The dataset it was trained on.
        is_global_zero: False in the other processes of a multi-process run.
    """

    model: nn.Module
    input_spec: InputSpec
    run_dir: Path
    weights_path: Path
    card: dict[str, Any]
    summary: dict[str, Any]
    dataset: SceneDataset
    is_global_zero: bool = True


class EpochReport(Callback):
    """One line per epoch (epoch, metrics, seconds) for logs without a terminal.

    Progress bars only redraw a terminal line; in a ``nohup ... > log`` file nothing shows
    how far a long run has got, so this writes one plain line at the end of each epoch.
    """

    def __init__(self, throughput: ThroughputMonitor) -> None:
        self.throughput = throughput

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write ``epoch E/N: name value, ... (S s)``."""
        if trainer.global_rank != 0:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        seconds = self.throughput.epoch_seconds[-1] if self.throughput.epoch_seconds else 0.0
        line = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown} ({seconds:.0f} s)"
        bar = trainer.progress_bar_callback
        if bar is not None:
            bar.print(line)  # on a line of its own, not appended to the bar's
        else:
            print(line, file=sys.stderr, flush=True)


class ThroughputMonitor(Callback):
    """Times training (data loading and steps, not validation) and counts its images.

    Lightning runs validation inside the training epoch, so the clock advances from the
    epoch start to each batch end, and restarts at every epoch start. The totals travel in
    the checkpoints, so a resumed run reports the time of all its epochs.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.images = 0
        self.earlier_wall_s = 0.0
        self._last = 0.0
        self._fit_start = time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the wall clock of this attempt."""
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch clock."""
        self._last = time.perf_counter()
        self.epoch_seconds.append(0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        now = time.perf_counter()
        self.epoch_seconds[-1] += now - self._last
        self._last = now
        self.images += int(batch[1].shape[0])

    @property
    def wall_s(self) -> float:
        """Wall time of all attempts so far, validation and checkpointing included."""
        return self.earlier_wall_s + time.perf_counter() - self._fit_start

    @property
    def images_per_second(self) -> float:
        """Training images per second over all epochs (one process)."""
        total = sum(self.epoch_seconds)
        return self.images / total if total else 0.0

    def state_dict(self) -> dict:
        """Totals saved into each checkpoint."""
        return {"epoch_seconds": list(self.epoch_seconds), "images": self.images,
                "wall_s": self.wall_s}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the totals of the interrupted attempt."""
        self.epoch_seconds = list(state_dict["epoch_seconds"])
        self.images = int(state_dict["images"])
        self.earlier_wall_s = float(state_dict["wall_s"])


def resolve_input_spec(config: TrainConfig, dataset: SceneDataset) -> InputSpec:
    """Work out the model's input resolution and normalisation from the config.

    Args:
        config: The run's configuration (``normalize``, ``mean``/``std``, ``input_size``).
        dataset: The loaded dataset (for train-split statistics and image size).

    Returns:
        The :class:`InputSpec` the model is trained and exported with.
    """
    info = model_info(config.model) if not config.model.startswith("timm/") else None
    if config.normalize == "custom":
        mean, std = config.mean, config.std
    elif config.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif config.normalize == "model":
        mean = info.pretrained_mean if info else IMAGENET_MEAN
        std = info.pretrained_std if info else IMAGENET_STD
    else:
        mean, std = dataset.channel_stats()
        mean, std = tuple(round(v, 6) for v in mean), tuple(round(v, 6) for v in std)
    size = config.input_size
    if size is None and info is not None:
        size = info.input_side(config.model_kwargs)
    return InputSpec(size=size, mean=mean, std=std)


def load_config_dataset(config: TrainConfig, progress: bool = True) -> SceneDataset:
    """Load the dataset a config names."""
    return load_dataset(
        config.dataset,
        config.data_dir,
        split_dir=config.split_dir,
        download=config.download,
        image_size=config.image_size,
        skip_bad_files=config.skip_bad_files,
        seed=config.seed,
        progress=progress,
    )


@holds_run_lock
def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    model: nn.Module | None = None,
    dataset: SceneDataset | None = None,
    loss: TrainingLoss | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Train a classifier as ``config`` says and save everything in ``run_dir``.

    The run directory receives ``config.yaml`` (the resolved configuration), the split
    files actually used, Lightning checkpoints (``checkpoints/last.ckpt`` for ``resume``),
    ``model.safetensors`` (best validation weights) with its card ``model.json``, metrics
    logs and ``train_summary.json``. It holds the run directory's lock throughout (a second
    writer fails at once); checkpoints are written atomically, and ``resume`` reads them
    weights-only, falling back to the one before a damaged ``last.ckpt``
    (:mod:`satcompress.train.checkpoint_io`).

    Args:
        config: What to train and how.
        run_dir: Output folder. Refused if it already holds a run, unless ``resume``.
        model: Your own ``nn.Module`` instead of ``config.model`` from the registry.
        dataset: An already loaded dataset (skips loading ``config.dataset``).
        loss: A training loss to plug in (e.g. distillation); default cross-entropy.
        resume: Continue an interrupted run from ``run_dir/checkpoints/last.ckpt``.
        progress: Show progress bars.
        callbacks: Extra Lightning callbacks.

    Returns:
        A :class:`TrainResult` with the trained model and where things were written.

    Raises:
        RunDirLockedError: Another process is writing ``run_dir``.
        CheckpointError: ``resume`` finds no usable checkpoint (damaged or refused).
        KeyboardInterrupt: On Ctrl-C (Lightning's own exit is turned back into it).
    """
    run_dir = Path(run_dir)
    config = config.with_absolute_paths()  # config.yaml and card name the data from anywhere
    ckpt_dir = run_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    checkpoint_io = AtomicCheckpointIO()
    resume_from = _prepare_run_dir(config, run_dir, resume, last_ckpt, checkpoint_io)
    if config.threads:
        torch.set_num_threads(config.threads)
    L.seed_everything(config.seed, workers=True, verbose=False)

    dataset = dataset or load_config_dataset(config, progress)
    spec = resolve_input_spec(config, dataset)
    counts = ", ".join(f"{len(s.labels)} {name}" for name, s in dataset.splits.items())
    log.info(
        "data: %s at %s (%s); split: %s; input %s, mean %s, std %s",
        dataset.name, dataset.root, counts, dataset.split_source,
        "x".join(map(str, spec.size or dataset.image_size)),
        spec.mean, spec.std,
    )  # fmt: skip
    initial = None  # what the card records of the starting weights
    if model is None:
        model, initial = initial_model(config, len(dataset.classes))
    # written once data and starting weights are known good: a refused run leaves nothing
    atomic_write_bytes(
        run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False).encode()
    )
    dataset.write_split_files(run_dir / "splits")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    task = ClassificationTask(model, spec, config, len(dataset.classes), loss=loss)
    datamodule = SceneDataModule(
        dataset,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        num_workers=config.num_workers,
        seed=config.seed,
    )
    checkpoint, last = _checkpoint_callbacks(ckpt_dir)
    throughput = ThroughputMonitor()
    all_callbacks: list[Callback] = [checkpoint, last, throughput, *(callbacks or [])]
    if progress and not sys.stderr.isatty():
        all_callbacks.append(EpochReport(throughput))
    if config.ema_decay is not None:
        all_callbacks.append(EMAWeightAveraging(decay=config.ema_decay))
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        callbacks=all_callbacks,
        logger=CSVLogger(run_dir, name="logs"),  # a new version_N per attempt: nothing lost
        default_root_dir=run_dir,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_train_batches=config.limit_batches,
        limit_val_batches=config.limit_batches,
        deterministic=False,
        log_every_n_steps=10,
        plugins=_checkpoint_plugins(config.strategy, checkpoint_io),
    )
    _fit(trainer, task, datamodule, resume_from)
    wall = throughput.wall_s

    best = Path(checkpoint.best_model_path or last_ckpt)
    _load_task_weights(model, best)
    weights_path = run_dir / "model.safetensors"
    summary = {
        "epochs": config.epochs,
        "wall_s": round(wall, 2),
        "s_per_epoch": [round(s, 2) for s in throughput.epoch_seconds],
        "train_img_per_s": round(throughput.images_per_second * trainer.world_size, 2),
        "best_val_accuracy": _as_float(checkpoint.best_model_score),
        "best_checkpoint": best.name,
        "world_size": trainer.world_size,
    }
    card = make_card(config.model, config.model_kwargs, dataset, spec, config.to_dict())
    card["lineage"] = [
        {"stage": "train", "config": serialize_config(config), "input_card_hash": None}
    ]
    card["val_accuracy"] = summary["best_val_accuracy"]
    if initial is not None:
        card["initial_weights"] = initial
    if trainer.is_global_zero:
        save_weights(model, weights_path)
        card["weights_sha256"] = file_digest(weights_path, "sha256")
        atomic_write_json(run_dir / "model.json", card)
        atomic_write_json(run_dir / "train_summary.json", summary)
    model.eval()
    return TrainResult(
        model, spec, run_dir, weights_path, card, summary, dataset, trainer.is_global_zero
    )


def make_card(
    model_name: str,
    model_kwargs: dict[str, Any],
    dataset: SceneDataset,
    spec: InputSpec,
    recipe: dict[str, Any],
) -> dict[str, Any]:
    """The model card saved beside a weights file: enough to rebuild and evaluate it."""
    return {
        "format": CARD_FORMAT,
        "model": model_name,
        "model_kwargs": dict(model_kwargs),
        "num_classes": len(dataset.classes),
        "classes": list(dataset.classes),
        "input": spec.to_dict(),
        "dataset": dataset.name,
        "image_size": list(dataset.image_size),
        "split_source": dataset.split_source,
        "split_fingerprint": dataset.split_fingerprint,
        "data": DataSource.of(dataset, seed=int(recipe.get("seed", 0))).to_dict(),
        "recipe": recipe,
    }


def _prepare_run_dir(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    last_ckpt: Path,
    checkpoint_io: AtomicCheckpointIO,
) -> str | None:
    """Check the run directory; the checked checkpoint to resume."""
    saved = run_dir / "config.yaml"
    resume_from = None
    if resume:
        if not last_ckpt.is_file() and not previous_path(last_ckpt).is_file():
            raise ConfigError(f"nothing to resume: {last_ckpt} does not exist")
        if saved.is_file():
            _check_same_config(config, yaml.safe_load(saved.read_text()) or {}, saved)
        _remove_partial_writes(last_ckpt.parent)
        path, checkpoint = resume_checkpoint(last_ckpt)
        checkpoint_io.preload(path, checkpoint)  # checked once, not read twice
        resume_from = str(path)
    elif last_ckpt.is_file() or (run_dir / "model.safetensors").is_file():
        raise ConfigError(
            f"{run_dir} already holds a training run; pass --resume to continue it or choose "
            "another --run-dir"
        )
    else:
        _remove_partial_writes(last_ckpt.parent)
    return resume_from


def _remove_partial_writes(ckpt_dir: Path) -> None:
    """Delete the temporary files of interrupted saves (on rank 0, the one that saves)."""
    if not secondary_rank():
        remove_partial_writes(ckpt_dir)


def _checkpoint_callbacks(ckpt_dir: Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``best.ckpt`` (best ``val/acc``) and ``last.ckpt`` (every epoch, what resume reads).

    Lightning's own ``save_last`` rewrites ``last.ckpt`` only in an epoch that also saved a
    new best, so a resumed run would repeat the epochs since then; a second callback without
    a monitor saves it every epoch. No version counter: a name taken is overwritten (the
    lock rules out a second writer), never turned into ``best-v1.ckpt``.
    """
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/acc", mode="max",
                           enable_version_counter=False)  # fmt: skip
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False)
    return best, last


def _checkpoint_plugins(strategy: Any, checkpoint_io: AtomicCheckpointIO) -> list[Any]:
    """The checkpoint I/O plugin where the strategy saves through one (rank 0 writes a file)."""
    if isinstance(strategy, str) and (strategy == "auto" or strategy.startswith(_PLAIN)):
        return [checkpoint_io]
    log.info("strategy %s writes its own checkpoints (not through satcompress's atomic saves)",
             strategy)  # fmt: skip
    return []


#: Strategies that save one file through the ``CheckpointIO`` plugin.
_PLAIN = ("ddp", "single_device", "dp")


def _fit(
    trainer: L.Trainer, task: ClassificationTask, datamodule: Any, ckpt_path: str | None
) -> None:
    """``trainer.fit``; Ctrl-C comes out as ``KeyboardInterrupt`` with its handler restored.

    On Ctrl-C Lightning tears down, ignores further Ctrl-C and calls ``sys.exit(1)``: the
    command would end silently with status 1 instead of saying how to resume.
    """
    in_main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as err:
        if isinstance(err.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def _check_same_config(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    current = config.to_dict()
    # runs written before paths were stored absolute, or before a field existed (its default)
    saved = {**type(config)().to_dict(), **saved}
    saved.update({k: absolute_path(saved[k]) for k in config.PATH_FIELDS if saved.get(k)})
    ignored = {"limit_batches", "threads", "num_workers"}
    changed = sorted(
        k for k in set(current) | set(saved) if k not in ignored and current.get(k) != saved.get(k)
    )
    if changed:
        raise ConfigError(
            f"cannot resume with a different configuration than {path}: "
            f"changed {', '.join(changed)}"
        )


def _load_task_weights(model: nn.Module, checkpoint_path: Path) -> None:
    """Copy the ``model.*`` weights of a Lightning checkpoint into ``model`` (weights only)."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    model.load_state_dict(weights)


def _as_float(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)
