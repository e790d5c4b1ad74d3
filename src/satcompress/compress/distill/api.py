"""``distill()``: train a student with a frozen teacher through the one training loop."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback
from torch import nn

from satcompress.compress.distill.config import DistillConfig
from satcompress.compress.distill.loss import DistillationLoss
from satcompress.compress.distill.teacher import Teacher, check_teacher_classes, load_teacher
from satcompress.config import ConfigError
from satcompress.data import SceneDataset
from satcompress.preprocess import InputSpec
from satcompress.train import TrainConfig, TrainResult, load_config_dataset, resolve_input_spec
from satcompress.train import train as train_model
from satcompress.utils.io import atomic_write_bytes, atomic_write_json
from satcompress.utils.lock import holds_run_lock

log = logging.getLogger(__name__)

DISTILL_FILE = "distill.yaml"


@holds_run_lock
def distill(
    config: TrainConfig,
    distill_config: DistillConfig,
    teacher: str | Path | nn.Module | Teacher | Any,
    run_dir: str | Path,
    *,
    teacher_weights: str | Path | None = None,
    teacher_spec: InputSpec | None = None,
    teacher_classes: list[str] | None = None,
    model: nn.Module | None = None,
    dataset: SceneDataset | None = None,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Train ``config.model`` (or ``model``) as a student of a frozen ``teacher``.

    This is :func:`satcompress.train.train` with a :class:`DistillationLoss` plugged in:
    same run directory layout, checkpoints, ``--resume`` and EMA. Additionally the run
    directory gets ``distill.yaml`` (the KD settings and the teacher), the card's recipe
    gets a ``distill`` entry, and the summary gets the teacher's time (``teacher_s``) and
    its share of the training time (``teacher_share``).

    Args:
        config: The student and how to train it (as for ``train``).
        distill_config: Temperature, KD weight, feature layers, teacher cache.
        teacher: A run directory or weights file with its card, a registry name (with
            ``teacher_weights``), an ``nn.Module`` (with ``teacher_spec``), a ``Teacher``,
            or a ``TrainResult``/``TrainedModel``.
        run_dir: Output folder.
        teacher_weights: Weights file of a registry-name teacher.
        teacher_spec: The teacher's input spec, overriding its card's.
        teacher_classes: The teacher's class names, if its card does not give them.
        model: Your own student ``nn.Module`` instead of ``config.model``.
        dataset: An already loaded dataset.
        resume: Continue an interrupted run (the KD settings must be the same).
        progress: Show progress bars.
        callbacks: Extra Lightning callbacks.

    Returns:
        The :class:`satcompress.train.TrainResult` of the student.

    Raises:
        TeacherMismatchError: If the teacher's classes differ from the dataset's.
        ConfigError: If settings are invalid or differ from the run being resumed.
    """
    run_dir = Path(run_dir)
    dataset = dataset or load_config_dataset(config, progress)
    found = load_teacher(
        teacher,
        weights=teacher_weights,
        input_spec=teacher_spec,
        classes=teacher_classes,
        num_classes=len(dataset.classes),
    )
    check_teacher_classes(found, dataset.classes, dataset.name, dataset.image_size)
    L.seed_everything(config.seed, workers=True, verbose=False)  # as train() before its model
    student, initial = (model, None) if model is not None else _create_student(config, dataset)
    loss = DistillationLoss(
        found.model,
        found.input_spec,
        distill_config,
        label_smoothing=config.label_smoothing,
        student=student,
        student_spec=resolve_input_spec(config, dataset),
        image_size=dataset.image_size,
        channels_last=config.channels_last,
        augment=config.augment,
    )
    recipe = distill_recipe(distill_config, found, loss)
    _save_settings(run_dir, recipe, resume)
    log.info("distilling from teacher %s (%s)", found.source, recipe["teacher"]["model"])
    try:
        result = train_model(
            config,
            run_dir,
            model=student,
            dataset=dataset,
            loss=loss,
            resume=resume,
            progress=progress,
            callbacks=callbacks,
        )
    finally:
        loss.remove_hooks()
    if initial is not None:
        result.card["initial_weights"] = initial
    _finish(result, loss, recipe)
    return result


def distill_recipe(
    config: DistillConfig, teacher: Teacher, loss: DistillationLoss | None = None
) -> dict[str, Any]:
    """The ``recipe["distill"]`` entry: KD settings, the teacher, the cache actually used."""
    recipe: dict[str, Any] = {**config.to_dict(), "teacher": teacher.describe()}
    if loss is not None:
        recipe["teacher_cache_used"] = "memory" if loss.cache is not None else "none"
        if loss.features is not None:
            recipe["feature_shapes"] = loss.features.shapes
    return recipe


def _create_student(
    config: TrainConfig, dataset: SceneDataset
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The student (``--weights``/``--new-head`` as in training) and its starting weights."""
    from satcompress.train.initial import initial_model

    return initial_model(config, len(dataset.classes))


def _save_settings(run_dir: Path, recipe: dict[str, Any], resume: bool) -> None:
    """Write ``distill.yaml``; on resume, refuse different settings."""
    path = run_dir / DISTILL_FILE
    if resume and path.is_file():
        saved = yaml.safe_load(path.read_text()) or {}
        changed = sorted(k for k in set(saved) | set(recipe) if saved.get(k) != recipe.get(k))
        if changed:
            raise ConfigError(
                f"cannot resume with different distillation settings than {path}: "
                f"changed {', '.join(changed)}"
            )
        return
    holds_run = (run_dir / "checkpoints" / "last.ckpt").is_file() or (
        run_dir / "model.safetensors"
    ).is_file()
    if not resume and holds_run:
        return  # train() refuses this run directory; leave its files alone
    atomic_write_bytes(path, yaml.safe_dump(recipe, sort_keys=False).encode())


def _finish(result: TrainResult, loss: DistillationLoss, recipe: dict[str, Any]) -> None:
    """Add teacher time to the summary and the KD recipe to the card; rewrite both files."""
    stats = loss.stats()
    train_seconds = sum(result.summary.get("s_per_epoch", [])) or result.summary["wall_s"]
    stats["teacher_share"] = round(stats["teacher_s"] / train_seconds, 4) if train_seconds else 0.0
    result.summary.update(stats)
    result.card["recipe"] = {**result.card["recipe"], "distill": recipe}
    log.info(
        "teacher: %.1f s, %.0f%% of the training time (cache: %s)",
        stats["teacher_s"],
        100 * stats["teacher_share"],
        stats["teacher_cache"],
    )
    if result.is_global_zero:
        atomic_write_json(result.run_dir / "train_summary.json", result.summary)
        atomic_write_json(result.run_dir / "model.json", result.card)
