"""``prune()``: prune a trained model, fine-tune it through the one training loop, measure it.

Structured methods remove channels/heads in ``steps`` steps with Torch-Pruning, fine-tuning
after each through :func:`satcompress.train.train` (optionally distilling from the unpruned
model or any teacher); ``magnitude`` zeroes weights one-shot or on a gradual schedule during
fine-tuning. The run directory receives the pruned ``model.safetensors``, its card
``model.json`` (recipe included), ``pruning.json`` for structured pruning (see
:mod:`satcompress.models.pruned`), ``prune_summary.json``, each fine-tuning run under
``finetune/``. Measuring it (ONNX export, artifact, record) is the pipeline's prune stage
(:func:`satcompress.pipeline.prune`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from torch import nn

from satcompress.card import check_classes, training_recipe
from satcompress.checkpoint import TrainedModel, load_trained, pruning_architecture, read_card
from satcompress.compress.distill import (
    DistillationLoss,
    DistillConfig,
    Teacher,
    check_teacher_classes,
    load_teacher,
)
from satcompress.compress.prune.common import clone, example_input, subset
from satcompress.compress.prune.config import PruneConfig
from satcompress.compress.prune.structured import Calibration, StructuredPruner, layer_widths
from satcompress.compress.prune.transformers import split_multihead_attention
from satcompress.compress.prune.unstructured import (
    GradualPruning,
    apply_magnitude,
    cubic_schedule,
    make_permanent,
    prunable_layers,
    sparsity_report,
)
from satcompress.config import ConfigError
from satcompress.data import SceneDataset
from satcompress.models import save_weights
from satcompress.models.pruned import architecture, save_pruned
from satcompress.models.stats import count_macs, count_params
from satcompress.preprocess import InputSpec
from satcompress.train import TrainConfig, make_card, train
from satcompress.utils.io import atomic_write_json, file_digest
from satcompress.utils.lock import holds_run_lock

log = logging.getLogger(__name__)

SUMMARY_FILE = "prune_summary.json"


@dataclasses.dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: The pruned (and fine-tuned) model, in eval mode.
        input_spec: Its input resolution and normalisation (the unpruned model's).
        run_dir: Where everything was written.
        weights_path: The pruned weights (``model.safetensors``).
        card: Its card (``model.json``), with the pruning recipe.
        summary: Costs before/after, per-step figures, per-layer widths or sparsity.
        record: The evaluation record, set by the pipeline's prune stage (None here).
    """

    model: nn.Module
    input_spec: InputSpec
    run_dir: Path
    weights_path: Path
    card: dict[str, Any]
    summary: dict[str, Any]
    record: dict[str, Any] | None = None


@dataclasses.dataclass
class _Source:
    model: nn.Module
    input_spec: InputSpec
    card: dict[str, Any]
    arch: dict[str, Any] | None


@dataclasses.dataclass
class _Run:
    """What every fine-tuning run of one ``prune`` call shares."""

    model: nn.Module
    dataset: SceneDataset
    spec: InputSpec
    config: TrainConfig
    run_dir: Path
    teacher: Teacher | None
    distill_config: DistillConfig | None
    progress: bool
    callbacks: list[Callback]


@holds_run_lock
def prune(
    model: nn.Module | TrainedModel | Any | str | Path,
    dataset: SceneDataset,
    config: PruneConfig,
    run_dir: str | Path,
    *,
    input_spec: InputSpec | None = None,
    card: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    teacher: str | Path | nn.Module | Teacher | None = None,
    teacher_weights: str | Path | None = None,
    distill_config: DistillConfig | None = None,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
) -> PruneResult:
    """Prune ``model`` as ``config`` says, fine-tune it and save it (weights, card, summary).

    The caller's model is not modified: a copy is pruned.

    Args:
        model: An ``nn.Module`` (with ``input_spec``), a ``TrainedModel``/``TrainResult``, or
            a run directory / weights file with its card (pruned ones included).
        dataset: The dataset to fine-tune on and evaluate with.
        config: Method, ratio, steps, fine-tuning epochs.
        run_dir: Output folder; refused if it already holds a pruned model.
        input_spec: The model's input spec (overrides the card's).
        card: The model's card, for a plain module (registry name, builder arguments,
            training recipe); needed to reload a structurally pruned plain module by name.
        train_config: How to fine-tune; default: the card's training recipe. Its epochs are
            replaced by ``config.finetune_epochs``; its normalisation by the model's.
        teacher: Distil while fine-tuning: ``"self"`` (the unpruned model) or any teacher
            :func:`satcompress.compress.distill.load_teacher` accepts.
        teacher_weights: Weights of a registry-name teacher.
        distill_config: Distillation settings (default ``DistillConfig()``).
        progress: Show progress bars.
        callbacks: Extra Lightning callbacks for the fine-tuning runs.

    Returns:
        A :class:`PruneResult`.

    Raises:
        ConfigError: Invalid settings, or ``run_dir`` already holds a pruned model.
        PruningError: A layer name does not exist, the dependency graph cannot handle the
            model, or the pruned model no longer runs.
    """
    started = time.perf_counter()
    source = _resolve_source(model, input_spec, card, dataset)
    run_dir = _prepare_run_dir(Path(run_dir))
    work = clone(source.model).eval()
    ft_config = finetune_config(config, train_config, source.card, source.input_spec)
    found = _teacher(teacher, source, dataset, teacher_weights)
    run = _Run(
        work, dataset, source.input_spec, ft_config, run_dir, found, distill_config,
        progress, list(callbacks or []),
    )  # fmt: skip
    if config.structured:
        split_multihead_attention(work)  # the same numbers; its layers then prune by head
    example = example_input(source.input_spec, dataset.image_size)
    before = _cost(work, example)
    widths = layer_widths(work)
    if config.structured:
        steps, arch, details = _structured(run, config, example, source.arch)
    else:
        steps, details = _unstructured(run, config)
        arch = _keep_arch(source.arch, work)
    summary = _summary(config, before, _cost(work, example), steps, details, widths, work)
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    recipe = prune_recipe(config, ft_config, source.card, found, distill_config)
    return _finish(run, source, summary, recipe, arch)


def finetune_config(
    config: PruneConfig,
    train_config: TrainConfig | None,
    card: dict[str, Any],
    spec: InputSpec,
) -> TrainConfig:
    """The fine-tuning ``TrainConfig``: the given one, else the card's training recipe.

    It keeps the model's own normalisation and input size, and takes the pruning learning
    rate; magnitude pruning turns the weight average (EMA) off: its masked weights are
    computed tensors, which the average's deep copy cannot take.
    """
    base = train_config or _config_from_card(card)
    size = None
    if spec.size is not None:
        size = spec.size[0] if spec.size[0] == spec.size[1] else list(spec.size)
    changes: dict[str, Any] = {
        "normalize": "custom",
        "mean": spec.mean,
        "std": spec.std,
        "input_size": size,
        "weights": None,
        "new_head": False,
        "pretrained": False,
    }
    if config.finetune_lr is not None:
        changes["lr"] = config.finetune_lr
    if not config.structured:
        changes["ema_decay"] = None  # masked weights cannot be deep-copied into an average
    return base.replace(**changes)


def _config_from_card(card: dict[str, Any]) -> TrainConfig:
    recipe = training_recipe(card)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in recipe.items() if k in names}
    for key in ("model", "model_kwargs"):
        if key not in values and key in card:
            values[key] = card[key]
    return TrainConfig.from_dict(values)


def prune_recipe(
    config: PruneConfig,
    ft_config: TrainConfig,
    card: dict[str, Any],
    teacher: Teacher | None,
    distill_config: DistillConfig | None,
) -> dict[str, Any]:
    """The recipe of a pruned model: the pruning, its fine-tuning, and what it started from."""
    recipe: dict[str, Any] = {
        "stage": "prune",
        "prune": config.to_dict(),
        "finetune": ft_config.to_dict() if config.finetune_epochs else None,
        "base": {
            "model": card.get("model"),
            "weights_sha256": card.get("weights_sha256"),
            "val_accuracy": card.get("val_accuracy"),
            "recipe": card.get("recipe"),
        },
    }
    if teacher is not None:
        recipe["distill"] = {
            **(distill_config or DistillConfig()).to_dict(),
            "teacher": teacher.describe(),
        }
    return recipe


def _resolve_source(
    model: Any, spec: InputSpec | None, card: dict[str, Any] | None, dataset: SceneDataset
) -> _Source:
    if isinstance(model, (str, Path)):
        model = load_trained(model, num_classes=len(dataset.classes))
    if isinstance(model, TrainedModel):
        check_classes(model.card, dataset.classes, model.weights_path)
        arch = pruning_architecture(model)
        return _Source(model.model, spec or model.input_spec, model.card, arch)
    if isinstance(model, nn.Module):
        if spec is None:
            raise ConfigError(
                "prune() of an nn.Module needs its input spec: pass input_spec=InputSpec(...)"
            )
        found = dict(card or {})
        found.setdefault("classes", list(dataset.classes))
        return _Source(model, spec, found, None)
    if hasattr(model, "model") and hasattr(model, "input_spec"):  # a TrainResult
        found = dict(getattr(model, "card", {}) or card or {})
        return _Source(model.model, spec or model.input_spec, found, None)
    raise ConfigError(f"cannot prune a {type(model).__name__}: give a module, run or weights")


def _prepare_run_dir(run_dir: Path) -> Path:
    if (run_dir / "model.safetensors").is_file():
        raise ConfigError(f"{run_dir} already holds a pruned model; choose another run directory")
    stale = run_dir / "finetune"
    if stale.is_dir():  # fine-tuning runs of an interrupted attempt: start them again
        log.info("removing the unfinished fine-tuning runs in %s", stale)
        shutil.rmtree(stale)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _teacher(
    teacher: Any, source: _Source, dataset: SceneDataset, weights: str | Path | None
) -> Teacher | None:
    if teacher is None:
        return None
    if isinstance(teacher, str) and teacher == "self":
        frozen = clone(source.model).eval().requires_grad_(False)
        name = source.card.get("model", type(source.model).__name__)
        return Teacher(frozen, source.input_spec, list(dataset.classes), "unpruned", name)
    found = load_teacher(teacher, weights=weights, num_classes=len(dataset.classes))
    check_teacher_classes(found, dataset.classes, dataset.name, dataset.image_size)
    return found


def _structured(
    run: _Run, config: PruneConfig, example: Any, base_arch: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    pruner = StructuredPruner(run.model, config, example)
    calibration = None
    if config.method == "taylor":
        count = config.taylor_batches * config.calibration_batch_size
        images, labels = subset(run.dataset, "train", count, run.config.seed)
        calibration = Calibration(images, labels, run.spec, config.calibration_batch_size)
    steps = []
    for index, epochs in enumerate(split_epochs(config.finetune_epochs, config.steps), 1):
        pruner.step(calibration)
        row: dict[str, Any] = {"step": index, **_cost(run.model, example)}
        log.info("pruning step %d: %s params, %s MACs", index, row["params"], row["macs"])
        tuned = _finetune(run, epochs, f"step{index}")
        if tuned:
            row["finetune"] = tuned
        steps.append(row)
    arch = architecture(run.model, pruner.history(), example)
    if base_arch is not None:  # pruned before: its history comes first
        arch["history"] = [*base_arch["history"], *arch["history"]]
        arch["example_input"] = base_arch["example_input"]
    groups = [dataclasses.asdict(g) for g in pruner.groups()]
    return steps, arch, {"groups": groups}


def _unstructured(run: _Run, config: PruneConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    layers = prunable_layers(run.model, config.ignored_layers)
    schedule = cubic_schedule(config.ratio, config.steps)
    if config.steps == 1:
        apply_magnitude(layers, config.ratio, config.global_pruning)
        tuned = _finetune(run, config.finetune_epochs, "oneshot")
    else:
        gradual = GradualPruning(layers, schedule, config.global_pruning)
        tuned = _finetune(run, config.finetune_epochs, "gradual", [gradual])
    make_permanent(run.model)
    report = sparsity_report(layers)
    step = {"schedule": schedule, "sparsity": report["sparsity"]}
    if tuned:
        step["finetune"] = tuned
    return [step], {"sparsity": report}


def split_epochs(total: int, steps: int) -> list[int]:
    """Fine-tuning epochs after each step: ``total`` shared, the last steps get the rest."""
    base, extra = divmod(total, steps)
    return [base + (1 if index >= steps - extra else 0) for index in range(steps)]


def _finetune(
    run: _Run, epochs: int, name: str, callbacks: list[Callback] | None = None
) -> dict[str, Any] | None:
    """Fine-tune the pruned model in place for ``epochs`` (with the teacher, if any)."""
    if epochs == 0:
        return None
    config = run.config.replace(epochs=epochs)
    loss = None
    if run.teacher is not None:
        loss = DistillationLoss(
            run.teacher.model,
            run.teacher.input_spec,
            run.distill_config or DistillConfig(),
            label_smoothing=config.label_smoothing,
            student=run.model,
            student_spec=run.spec,
            image_size=run.dataset.image_size,
            channels_last=config.channels_last,
            augment=config.augment,
        )
    run.model.train()  # Lightning leaves modules in the mode it finds them
    try:
        result = train(
            config,
            run.run_dir / "finetune" / name,
            model=run.model,
            dataset=run.dataset,
            loss=loss,
            progress=run.progress,
            callbacks=[*run.callbacks, *(callbacks or [])],
        )
    finally:
        if loss is not None:
            loss.remove_hooks()
    run.model.eval()
    keys = ("epochs", "wall_s", "best_val_accuracy", "train_img_per_s")
    return {k: result.summary[k] for k in keys if k in result.summary}


def _cost(model: nn.Module, example: Any) -> dict[str, int]:
    return {"params": count_params(model), "macs": count_macs(model, tuple(example.shape[-2:]))}


def _keep_arch(arch: dict[str, Any] | None, model: nn.Module) -> dict[str, Any] | None:
    """A structurally pruned model pruned again without structure keeps its architecture."""
    if arch is None:
        return None
    return {**arch, "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def _summary(
    config: PruneConfig,
    before: dict[str, int],
    after: dict[str, int],
    steps: list[dict[str, Any]],
    details: dict[str, Any],
    widths_before: dict[str, int],
    model: nn.Module,
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "method": config.method,
        "structured": config.structured,
        "ratio": config.ratio,
        "before": before,
        "after": after,
        "params_ratio": round(before["params"] / max(1, after["params"]), 4),
        "macs_ratio": round(before["macs"] / max(1, after["macs"]), 4),
        "steps": steps,
    }
    if config.structured:
        widths = layer_widths(model)
        summary["layers"] = {
            name: {"before": width, "after": widths.get(name)}
            for name, width in widths_before.items()
        }
        summary.update(details)
    else:
        report = details["sparsity"]
        summary["sparsity"] = report["sparsity"]
        summary["nonzero_params"] = after["params"] - report["zeros"]
        summary["layers"] = report["layers"]
    return summary


def _finish(
    run: _Run,
    source: _Source,
    summary: dict[str, Any],
    recipe: dict[str, Any],
    arch: dict[str, Any] | None,
) -> PruneResult:
    """Save weights, card (and architecture) and summary."""
    card = make_card(
        source.card.get("model", type(run.model).__name__),
        source.card.get("model_kwargs", {}),
        run.dataset,
        run.spec,
        recipe,
    )
    card["val_accuracy"] = _last_val_accuracy(summary)
    if arch is not None:
        weights = save_pruned(run.model, run.run_dir, card, arch)
    else:
        weights = save_weights(run.model, run.run_dir / "model.safetensors")
        card["weights_sha256"] = file_digest(weights, "sha256")
        atomic_write_json(run.run_dir / "model.json", card)
    card = read_card(weights)
    atomic_write_json(run.run_dir / SUMMARY_FILE, summary)
    return PruneResult(run.model, run.spec, run.run_dir, weights, card, summary)


def _last_val_accuracy(summary: dict[str, Any]) -> float | None:
    tuned = [s["finetune"] for s in summary["steps"] if s.get("finetune")]
    return tuned[-1].get("best_val_accuracy") if tuned else None
