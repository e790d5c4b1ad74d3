"""Training configuration: one validated, serialisable dataclass per run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from satcompress.config import Config, ConfigError
from satcompress.preprocess.config import AugmentConfig

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
NORMALIZATIONS = ("dataset", "imagenet", "model", "custom")


@dataclasses.dataclass
class TrainConfig(Config):
    """Everything that defines a training run; saved as ``config.yaml`` in its run directory.

    The defaults are the project's best measured recipe for ResNet-18 on EuroSAT at 64x64 on
    a CPU (see ``benchmarks/baseline.py`` and the README).

    Attributes:
        model: Registry name (``satcompress.models.list_models()``) or ``timm/<name>``.
        model_kwargs: Extra keyword arguments for the model builder (e.g. ``width_mult``).
        pretrained: Start from the library's pretrained weights (needs network).
        weights: Start from a local weights file (safetensors or a weights-only checkpoint).
        new_head: With ``weights``: load everything but the classifier from the file, and train
            a new classifier for this dataset's classes (fine-tune weights trained on
            another dataset); the card records the file, its sha256 and its class count.
        dataset: ``eurosat``, ``ucmerced`` or ``imagefolder``.
        data_dir: Folder that holds the dataset (see ``satcompress data info``).
        split_dir: Folder of split files; ``None`` = auto-detect, else a seeded stratified split.
        download: Download the official archive into ``data_dir`` if it is missing.
        image_size: Decode resolution of the dataset (``None`` = dataset default).
        input_size: Model input resolution (``None`` = the decode resolution).
        train_input_size: Progressive resizing: the first ``train_input_fraction`` of the
            epochs train on batches resized (bilinear) to this resolution; the rest, and
            every evaluation and export, use ``input_size``. ``None`` = off.
        train_input_fraction: Fraction of the epochs trained at ``train_input_size``.
        normalize: ``dataset`` (train-split statistics), ``imagenet``, ``model`` (the model's
            pretrained statistics) or ``custom`` (``mean`` and ``std``).
        mean: Per-channel mean for ``normalize="custom"``.
        std: Per-channel std for ``normalize="custom"``.
        skip_bad_files: Skip unreadable images instead of failing (the count is reported).
        epochs: Number of training epochs.
        batch_size: Training batch size (per device).
        eval_batch_size: Batch size for validation and test.
        optimizer: ``sgd`` (Nesterov momentum) or ``adamw``.
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay.
        norm_bias_weight_decay: Weight decay of the 1-d parameters (normalisation scales and
            shifts, biases); ``None`` = ``weight_decay``, ``0`` = exempt them.
        schedule: ``onecycle``, ``cosine`` (with linear warm-up) or ``constant``.
        warmup: Fraction of the steps spent warming up.
        label_smoothing: Cross-entropy label smoothing.
        sam_rho: Sharpness-aware minimisation (Foret et al., 2021): each step first moves the
            weights this far (L2) up the gradient, then updates them with the gradient found
            there. Costs a second forward and backward pass per step; ``0`` = off.
        ema_decay: Exponential moving average of the weights (evaluated and saved); ``None`` = off.
            Off by default: with a one-cycle schedule the EMA lags the annealed weights (measured
            on ResNet-18/EuroSAT: 94.31% with decay 0.999 at batch 64, below the plain recipe).
        augment: Augmentation settings (``KEY=VALUE``: hflip, vflip, rot90, shift, brightness,
            contrast, mixup, cutmix, mix_prob; see ``AugmentConfig``).
        seed: Seed for the split, initialisation, shuffling and augmentation.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: Number of devices (processes) per node.
        num_nodes: Number of nodes.
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ...).
        threads: Torch intra-op threads (``None`` = torch default).
        num_workers: DataLoader workers (the data is in memory: 0 is usually fastest).
        limit_batches: Quick trial: at most this many batches per epoch for train/val/test.
        channels_last: Train in channels-last memory format (faster convolutions on CPU).
    """

    model: str = "resnet18"
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained: bool = False
    weights: str | None = None
    new_head: bool = False
    dataset: str = "eurosat"
    data_dir: str = "data"
    split_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    input_size: int | None = None
    train_input_size: int | None = None
    train_input_fraction: float = 0.7
    normalize: str = "dataset"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    skip_bad_files: bool = False
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    norm_bias_weight_decay: float | None = None
    schedule: str = "onecycle"
    warmup: float = 0.15
    label_smoothing: float = 0.1
    sam_rho: float = 0.0
    ema_decay: float | None = None
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    threads: int | None = None
    num_workers: int = 0
    limit_batches: int | None = None
    channels_last: bool = True

    #: Fields that hold a path (relative ones are to the working folder).
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data_dir", "split_dir", "weights")

    def __post_init__(self) -> None:
        super().__post_init__()  # types checked: mean and std are numbers, stored as floats
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(float(v) for v in value))

    def validate(self) -> None:
        """Reject impossible values with a message naming the option."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("normalize", self.normalize, NORMALIZATIONS)
        if self.normalize == "custom" and (self.mean is None or self.std is None):
            raise ConfigError("normalize='custom' needs both mean and std (three values each)")
        for name in ("epochs", "batch_size", "eval_batch_size", "devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "norm_bias_weight_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.sam_rho < 10:
            raise ConfigError(f"sam_rho must be in [0, 10), got {self.sam_rho}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.limit_batches is not None and self.limit_batches < 1:
            raise ConfigError(f"limit_batches must be >= 1, got {self.limit_batches}")
        if self.train_input_size is not None and self.train_input_size < 8:
            raise ConfigError(f"train_input_size must be >= 8 pixels, got {self.train_input_size}")
        if not 0 < self.train_input_fraction < 1:
            raise ConfigError(
                f"train_input_fraction must be in (0, 1), got {self.train_input_fraction}"
            )
        if self.pretrained and self.weights:
            raise ConfigError("give either pretrained=True or weights=FILE, not both")
        if self.new_head and not self.weights:
            raise ConfigError(
                "new_head (--new-head) replaces the classifier of a weights file: give "
                "weights=FILE (--weights FILE) too"
            )

    def with_absolute_paths(self) -> TrainConfig:
        """This config with its paths (:attr:`PATH_FIELDS`) absolute, as runs record them.

        A run's ``config.yaml``, card and record then name the same data from any working
        folder. An empty ``data_dir`` (a fine-tune on its source model's data) stays empty.
        """
        changes = {}
        for name in self.PATH_FIELDS:
            value = getattr(self, name)
            if value and absolute_path(value) != value:
                changes[name] = absolute_path(value)
        return self.replace(**changes) if changes else self


def recipe_fields(card: dict[str, Any]) -> dict[str, Any]:
    """The training recipe a model card records, as :class:`TrainConfig` fields.

    :func:`satcompress.card.training_recipe`, less any key that is not a field (older cards).
    """
    from satcompress.card import training_recipe

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in training_recipe(card).items() if k in names}


def absolute_path(path: str | Path) -> str:
    """``path`` (``~`` expanded, relative to the working folder) as an absolute string."""
    return str(Path(path).expanduser().resolve())


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
