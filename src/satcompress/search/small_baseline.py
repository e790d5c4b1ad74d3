"""The ``small-model`` baseline: a small architecture trained to fit the budget directly.

Instead of compressing the input model, train a small one (MobileNetV2 at width 0.5 by
default) by distillation from the same teacher, then quantize it uniformly to the widest
bit-width whose file fits the budget and give it the baselines' fine-tune (QAT with
distillation from the same teacher). It answers "why not just train a small model?" at the
same budget, in the same run, measured on its file like every candidate.

The student's training run lives in ``candidates/small-model/student`` and resumes from its
last checkpoint; a finished one is reused.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

from satcompress.artifact.encode import BytePredictor
from satcompress.checkpoint import TrainedModel
from satcompress.compress.plan import CompressionPlan, LayerPlan
from satcompress.compress.quantize.qat import quantizable_layers
from satcompress.data import SceneDataset
from satcompress.pipeline.load import load
from satcompress.pipeline.stages import distill
from satcompress.search.allocate import InfeasibleBudgetError
from satcompress.search.budget import format_bytes
from satcompress.search.candidates import manifest_estimate
from satcompress.train import TrainConfig
from satcompress.train.config import recipe_fields
from satcompress.utils.io import atomic_write_json

__all__ = ["KIND", "SmallModel", "fitting_bits", "small_model"]

#: The baseline's name in ``BAICConfig.baselines`` and its candidates' ``kind``.
KIND = "small-model"
_TIME_FILE = "small_model.json"


@dataclasses.dataclass
class SmallModel:
    """The distilled small model: where it is, what it cost, its loaded form.

    Attributes:
        run_dir: The student's training run (a source for candidate jobs).
        trained: The loaded student.
        seconds: Its distillation's training time (of the run that trained it).
        teacher: The teacher it was distilled from (``self`` resolved to a path).
    """

    run_dir: Path
    trained: TrainedModel
    seconds: float
    teacher: str


def small_model(
    trained: TrainedModel,
    source: str,
    dataset: SceneDataset,
    config: Any,
    run_dir: Path,
) -> SmallModel:
    """Distil ``config.small_model`` from the search's teacher (or reuse a finished run).

    Args:
        trained: The input model (its recipe is the student's, but for model and epochs).
        source: The input model's path (the teacher when ``config.teacher`` is ``self``).
        dataset: The search's dataset.
        config: The :class:`~satcompress.search.config.BAICConfig`.
        run_dir: The student's run directory.
    """
    teacher = source if config.teacher == "self" else config.teacher
    timing = run_dir / _TIME_FILE
    if (run_dir / "model.safetensors").is_file() and timing.is_file():
        seconds = float(json.loads(timing.read_text())["seconds"])
        return SmallModel(run_dir, load(run_dir), seconds, teacher)
    started = time.perf_counter()
    train_config = TrainConfig.from_dict({
        **recipe_fields(trained.card),
        "limit_batches": None, "model": config.small_model, "model_kwargs": config.small_kwargs,
        "epochs": config.small_epochs, "seed": config.seed,
    })  # fmt: skip
    result = distill(
        teacher, dataset, config.distill, run_dir, train_config=train_config,
        resume=(run_dir / "checkpoints" / "last.ckpt").is_file(), evaluate_model=False,
        latency=None, progress=False,
    )  # fmt: skip
    seconds = round(time.perf_counter() - started, 2)
    atomic_write_json(timing, {"seconds": seconds})
    return SmallModel(run_dir, load(result.run_dir), seconds, teacher)


def fitting_bits(
    student: TrainedModel,
    dataset: SceneDataset,
    config: Any,
    budget: int,
    factor: float,
) -> tuple[CompressionPlan, int]:
    """The uniform plan of the widest of ``bits`` whose predicted file fits ``budget``.

    Args:
        student: The small model.
        dataset: Its dataset (the image size of its file).
        config: The :class:`~satcompress.search.config.BAICConfig` (its ``bits`` are the
            widths tried; its settings are in the file's card).
        budget: The byte budget.
        factor: Real over predicted bytes measured so far (>= 1 makes the check stricter).

    Returns:
        The plan and its predicted bytes.

    Raises:
        InfeasibleBudgetError: If even the narrowest width is over the budget.
    """
    layers = quantizable_layers(student.model)
    info = manifest_estimate(student, dataset, config, layers)  # the card counts too
    predictor = BytePredictor(
        student.model, student.input_spec, tuple(dataset.image_size), info=info
    )
    bits, sizes = config.bits, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for width in sorted(bits, reverse=True):
            plan = CompressionPlan(default=LayerPlan(bits=width))
            sizes[width] = int(predictor.predict(plan) * factor) + 1
            if sizes[width] <= budget:
                return plan, sizes[width]
    smallest = min(sizes.values())
    raise InfeasibleBudgetError(
        f"the small model is {format_bytes(smallest)} at {min(bits)} bit(s), over the budget "
        f"{format_bytes(budget)}",
        min_bytes=smallest,
    )
