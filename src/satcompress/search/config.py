"""``BAICConfig``: the settings of a budget-aware compression search, validated and serialised."""

from __future__ import annotations

import dataclasses
from typing import Any

from satcompress.compress.distill import DistillConfig
from satcompress.config import Config, ConfigError, parse_value

__all__ = ["BASELINES", "EXECUTORS", "OPTIONAL_BASELINES", "BAICConfig", "quick_config"]

#: Baselines a run can add at the same budget (see :class:`BAICConfig`): the default ones.
BASELINES = ("uniform", "greedy")
#: Baselines not run by default: ``mct`` needs an optional extra (``pip install
#: satcompress[mct]``), ``small-model`` trains a model (``small_epochs`` epochs).
OPTIONAL_BASELINES = ("mct", "small-model")
EXECUTORS = ("local", "ray")
_BITS = range(1, 9)


@dataclasses.dataclass
class BAICConfig(Config):
    """Budget-Aware Iterative Compression: the most accurate plan whose file fits a budget.

    Attributes:
        budget: Byte budget of the saved ``.satc`` file: bytes (``1000000``), decimal or binary
            units (``1MB``, ``500kB``, ``1MiB``) or a ratio of the input model's fp32 artifact
            (``44x``). A hard limit: no file over it is ever saved.
        latency_budget_ms: Batch-1 latency limit in ONNX Runtime on this CPU (None = none).
        time_limit: Seconds for the whole search; once spent, no new candidate starts and
            the best one so far gets the final fine-tune. None = no limit.
        teacher: Distillation teacher of every fine-tune: ``self`` (the input model) or a run
            directory / weights file.
        bits: Weight bit-widths a layer may get (the search may also keep a layer in float,
            which costs 4 bytes per weight: only worth it for tiny layers).
        channel_ratios: Structured pruning ratios a coupled channel group may get (0 = keep
            all channels is always allowed); empty = quantization only.
        sparsities: Unstructured sparsities a layer may get on top of its bits (its
            smallest-magnitude weights zeroed, stored as a bit mask plus the nonzero codes);
            empty (the default) = none. Each adds a column to the sensitivity table.
        sensitivity_images: Training images of the per-layer sensitivity table.
        candidates: Most BAIC plans fine-tuned and measured (the iterations of the search).
        candidate_epochs: Fine-tuning epochs of each candidate (and baseline).
        candidate_batches: At most this many batches per candidate epoch (None = the whole
            training split): the candidates' accuracy only has to rank them.
        final_epochs: Fine-tuning epochs of the chosen plan, on the whole training split
            (0: the best candidate's file is the final one, scored on the test split).
        lr: Peak learning rate of the fine-tunes; None = a tenth of the input model's recipe.
        batch_size: Fine-tuning batch size; None = the input model's recipe.
        distill: Distillation settings of the fine-tunes.
        baselines: Baselines measured at the same budget: ``uniform`` (one bit-width and one
            prune ratio everywhere, the best pair that fits), ``greedy`` (cost per byte) and,
            not by default, ``mct`` (Sony's Model Compression Toolkit mixed-precision PTQ with
            the budget as its weights-memory target; ``pip install satcompress[mct]``) and
            ``small-model`` (``small_model`` distilled from the teacher for ``small_epochs``,
            quantized uniformly to the widest bits that fit, fine-tuned like the baselines).
        baseline_epochs: Fine-tuning epochs of the baselines (None = ``candidate_epochs``);
            set it to ``final_epochs`` to compare with the final model on equal terms.
        small_model: Architecture of the ``small-model`` baseline (a registry name).
        small_model_kwargs: Its constructor options; None = width 0.5 for ``mobilenet_v2``,
            the model's defaults for any other.
        small_epochs: Its distillation epochs, on the whole training split.
        uniform_pairs: Uniform pairs fine-tuned and measured: the least-cost fitting pair of
            each of the best ``uniform_pairs`` bit-widths (the additive model ranks uniform
            plans poorly at high compression); the baseline is the best measured one.
        workers: Candidate fine-tunes run at once (processes on this machine, or Ray tasks).
        executor: ``local`` (processes) or ``ray`` (``ray.init(address=ray_address)``).
        ray_address: Address of an existing Ray cluster; None starts a local Ray runtime.
        lzma: Also LZMA-compress the artifact's streams (smaller, but the size is then only
            bounded by the prediction, not equal to it); the budget is checked on the file.
        seed: Seed of the fine-tunes and of the sensitivity subset.
    """

    budget: str = "1MB"
    latency_budget_ms: float | None = None
    time_limit: float | None = None
    teacher: str = "self"
    bits: tuple[int, ...] = (8, 6, 4, 3, 2, 1)
    channel_ratios: tuple[float, ...] = (0.25, 0.5)
    sparsities: tuple[float, ...] = ()
    sensitivity_images: int = 256
    candidates: int = 3
    candidate_epochs: int = 1
    candidate_batches: int | None = None
    final_epochs: int = 3
    lr: float | None = None
    batch_size: int | None = None
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    baselines: tuple[str, ...] = BASELINES
    baseline_epochs: int | None = None
    small_model: str = "mobilenet_v2"
    small_model_kwargs: dict[str, Any] | None = None
    small_epochs: int = 10
    uniform_pairs: int = 3
    workers: int = 1
    executor: str = "local"
    ray_address: str | None = None
    lzma: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.budget = str(self.budget)
        self.bits = _as_tuple(self.bits)
        self.channel_ratios = _as_tuple(self.channel_ratios)
        self.sparsities = _as_tuple(self.sparsities)
        self.baselines = _as_tuple(self.baselines)
        super().__post_init__()

    def validate(self) -> None:
        """Reject impossible values with a message naming the option."""
        from satcompress.search.budget import check_budget

        check_budget(self.budget)  # the form; the value needs the model
        if not self.bits or any(b not in _BITS for b in self.bits):
            raise ConfigError(f"bits must be a non-empty list of 1..8, got {list(self.bits)}")
        if any(not 0 < r < 1 for r in self.channel_ratios):
            raise ConfigError(f"channel_ratios must be in (0, 1), got {list(self.channel_ratios)}")
        if any(not 0 < s < 1 for s in self.sparsities):
            raise ConfigError(f"sparsities must be in (0, 1), got {list(self.sparsities)}")
        known = BASELINES + OPTIONAL_BASELINES
        unknown = sorted(set(self.baselines) - set(known))
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; choose from {list(known)}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {list(EXECUTORS)}, got {self.executor!r}")
        if "small-model" in self.baselines:
            from satcompress.models import list_models

            if self.small_model not in list_models():
                raise ConfigError(
                    f"small_model {self.small_model!r} is not a known model; choose from "
                    f"{list_models()}"
                )
        for name in (
            "candidates",
            "workers",
            "sensitivity_images",
            "uniform_pairs",
            "small_epochs",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("candidate_epochs", "final_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("latency_budget_ms", "time_limit", "lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 (or None), got {value}")
        if self.candidate_batches is not None and self.candidate_batches < 1:
            raise ConfigError(f"candidate_batches must be >= 1, got {self.candidate_batches}")

    @property
    def small_kwargs(self) -> dict[str, Any]:
        """The small model's constructor options (``small_model_kwargs`` or its default)."""
        if self.small_model_kwargs is not None:
            return dict(self.small_model_kwargs)
        return {"width_mult": 0.5} if self.small_model == "mobilenet_v2" else {}

    @property
    def baseline_fine_tune_epochs(self) -> int:
        """Epochs of each baseline's fine-tune."""
        if self.baseline_epochs is None:
            return self.candidate_epochs
        return self.baseline_epochs


def quick_config(**overrides: Any) -> BAICConfig:
    """The ``--quick`` preset: minutes on 2 CPU cores instead of an hour.

    It trades accuracy for time: bits 8/4/2 and one channel ratio (half the sensitivity
    table), 128 sensitivity images, one candidate fine-tuned on 50 batches and kept as the
    final file (no final fine-tune), the uniform baseline only (its least-cost pair).
    """
    values: dict[str, Any] = {
        "bits": (8, 4, 2),
        "channel_ratios": (0.5,),
        "sensitivity_images": 128,
        "candidates": 1,
        "candidate_epochs": 1,
        "candidate_batches": 50,
        "final_epochs": 0,
        "baselines": ("uniform",),
        "uniform_pairs": 1,
    }
    values.update(overrides)
    return BAICConfig(**values)


def _as_tuple(value: Any) -> Any:
    """A comma-separated string (``"8,4,2"``) or a single number as a tuple of values.

    Anything else is returned unchanged, for the type check of :class:`Config`.
    """
    if isinstance(value, str):
        return tuple(parse_value(v) for v in value.split(",") if v)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,)
    return () if value is None else value
