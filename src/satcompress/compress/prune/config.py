"""Pruning settings: validated, serialisable dataclasses stored in every pruned model's recipe."""

from __future__ import annotations

import dataclasses

from satcompress.config import Config, ConfigError

#: ``magnitude`` is unstructured (weights zeroed); the others remove whole channels/heads.
METHODS = ("magnitude", "l1", "l2", "taylor", "bn")
STRUCTURED_METHODS = ("l1", "l2", "taylor", "bn")


@dataclasses.dataclass
class PruneConfig(Config):
    """How a model is pruned and fine-tuned (the fine-tuning itself is a ``TrainConfig``).

    Attributes:
        method: ``magnitude`` (unstructured: the smallest weights of every convolution and
            linear layer become exact zeros), or a structured importance that removes whole
            channels, MLP neurons and attention heads with Torch-Pruning's dependency graph:
            ``l1``/``l2`` (group weight norm), ``taylor`` (first-order Taylor, from gradients
            of a few training batches) or ``bn`` (batch-norm scale, network slimming).
        ratio: Fraction in [0, 1) removed: of the weights (magnitude) or of the channels of
            every prunable group (structured; parameters and MACs shrink about quadratically).
        global_pruning: Rank across all layers (one threshold for the whole model) instead of
            the same ratio in every layer.
        steps: Structured: pruning steps, the ratio growing linearly, with fine-tuning after
            each; magnitude: sparsity steps of a gradual (cubic) schedule, one per fine-tuning
            epoch (1 = one-shot).
        finetune_epochs: Total fine-tuning epochs, shared between the steps (the last steps
            get the remainder); 0 = no fine-tuning.
        finetune_lr: Peak learning rate of fine-tuning; None = the training config's.
        head_ratio: Transformers: fraction of attention heads removed in every attention
            layer (all layers together with global_pruning); None = ratio. The MLP hidden
            layers lose ``ratio`` of their neurons; the embedding width is kept.
        ignored_layers: Module names never pruned (the classifier is always kept).
        round_to: Structured: keep channel counts multiples of this (e.g. 8 for fast kernels).
        taylor_batches: Taylor: training batches whose gradients give the importance.
        calibration_batch_size: Batch size of those batches.
    """

    method: str = "l1"
    ratio: float = 0.5
    global_pruning: bool = False
    steps: int = 1
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    head_ratio: float | None = None
    ignored_layers: list[str] = dataclasses.field(default_factory=list)
    round_to: int | None = None
    taylor_batches: int = 4
    calibration_batch_size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.ignored_layers, str):
            self.ignored_layers = [self.ignored_layers]
        self.ignored_layers = [str(name) for name in self.ignored_layers]
        super().__post_init__()

    def validate(self) -> None:
        """Reject impossible values with a message naming the option."""
        check_method(self.method)
        check_ratio("ratio", self.ratio)
        if self.head_ratio is not None:
            check_ratio("head_ratio", self.head_ratio)
        for name in ("steps", "taylor_batches", "calibration_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise ConfigError(f"finetune_lr must be > 0 or None, got {self.finetune_lr}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1 or None, got {self.round_to}")
        if self.method == "magnitude" and 1 < self.steps and self.finetune_epochs < self.steps:
            raise ConfigError(
                f"gradual magnitude pruning takes one step per fine-tuning epoch: steps="
                f"{self.steps} needs finetune_epochs >= {self.steps}, got {self.finetune_epochs}"
            )

    @property
    def structured(self) -> bool:
        """True for the methods that remove channels (all but ``magnitude``)."""
        return self.method in STRUCTURED_METHODS

    @property
    def heads(self) -> float:
        """The fraction of attention heads to remove."""
        return self.ratio if self.head_ratio is None else self.head_ratio


@dataclasses.dataclass
class VitLayersConfig(Config):
    """ViT layer-importance analysis: accuracy when each block is removed or loses heads.

    Attributes:
        head_ratio: Fraction of the heads pruned in one block at a time (in (0, 1)).
        method: Importance that picks the heads (a structured method).
        split: Dataset split the accuracy is measured on.
        max_samples: Size of the (seeded random) subset of that split; None = all of it.
        batch_size: Evaluation batch size.
        seed: Seed of the subset.
    """

    head_ratio: float = 0.5
    method: str = "l1"
    split: str = "val"
    max_samples: int | None = 512
    batch_size: int = 128
    seed: int = 0

    def validate(self) -> None:
        """Reject impossible values with a message naming the option."""
        check_ratio("head_ratio", self.head_ratio)
        if self.head_ratio == 0:
            raise ConfigError("head_ratio must be in (0, 1)")
        if self.method not in STRUCTURED_METHODS:
            raise ConfigError(
                f"method must be one of {', '.join(STRUCTURED_METHODS)} (heads are removed "
                f"whole); got {self.method!r}"
            )
        check_eval_options(self.max_samples, self.batch_size)


def check_method(method: str) -> None:
    """Raise a ConfigError unless ``method`` is a known pruning method."""
    if method not in METHODS:
        raise ConfigError(
            f"method must be one of {', '.join(METHODS)} (magnitude = unstructured); got {method!r}"
        )


def check_ratio(name: str, value: float) -> None:
    """Raise a ConfigError unless ``value`` is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a fraction in [0, 1) (0.5 = remove half), got {value!r}")


def check_eval_options(max_samples: int | None, batch_size: int) -> None:
    """Raise a ConfigError for a non-positive subset size or batch size."""
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1 or None, got {max_samples}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
