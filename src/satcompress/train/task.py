"""The Lightning training task shared by every stage that fine-tunes a model.

Training from scratch, fine-tuning, and later distillation, pruning fine-tuning and QAT all
run through :class:`ClassificationTask`; they differ only in the model they pass and the
loss they plug in (see :class:`SupervisedLoss`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Protocol

import lightning as L
import torch
from torch import nn

from satcompress.preprocess import (
    AugmentConfig,
    BatchAugment,
    BatchMix,
    InputSpec,
    Preprocess,
    mixing_enabled,
)
from satcompress.train.config import TrainConfig


class TrainingLoss(Protocol):
    """A loss the task can plug in.

    It receives the student's logits, the labels, and the augmented uint8 images, so a
    distillation loss can run its teacher on the same images prepared the teacher's way.
    With MixUp/CutMix on, the labels are soft ``(B, K)`` targets of the mixed images.
    """

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor:
        """Return a scalar loss."""
        ...


class SupervisedLoss(nn.Module):
    """Cross-entropy on the labels (class indices or soft targets), with label smoothing."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of ``logits`` against ``labels`` (``images`` unused)."""
        return self.criterion(logits, labels)


class ClassificationTask(L.LightningModule):
    """Image classification on uint8 batches: augment, preprocess, forward, loss, metrics.

    Args:
        model: Any ``nn.Module`` mapping (B, 3, H, W) floats to (B, num_classes) logits.
        input_spec: The model's input resolution and normalisation.
        config: Optimiser, schedule and augmentation settings.
        num_classes: Number of classes (for the per-class metrics).
        loss: Training loss; default cross-entropy with the config's label smoothing. If it
            is an ``nn.Module`` with trainable parameters (e.g. distillation projections),
            they are optimised with the model's.
    """

    def __init__(
        self,
        model: nn.Module,
        input_spec: InputSpec,
        config: TrainConfig,
        num_classes: int,
        loss: TrainingLoss | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.preprocess = Preprocess(input_spec)
        augment = config.augment if config else AugmentConfig()
        self.augment = BatchAugment(augment)
        self.mix = BatchMix(augment, num_classes) if mixing_enabled(augment) else None
        self.config = config
        self.num_classes = num_classes
        self.loss = loss if loss is not None else SupervisedLoss(config.label_smoothing)
        self._memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        # SAM needs two backward passes per step on the same augmented batch: manual steps
        self.automatic_optimization = not (config and config.sam_rho > 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a uint8 batch."""
        return self.model(self._prepare(images))

    def _prepare(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.preprocess(images, size).contiguous(memory_format=self._memory_format)

    def _training_size(self) -> tuple[int, int] | None:
        """Progressive resizing: the training resolution of the current epoch (None = model's)."""
        cfg = self.config
        if cfg.train_input_size is None:
            return None
        resized_epochs = round(cfg.train_input_fraction * cfg.epochs)
        size = cfg.train_input_size
        return (size, size) if self.current_epoch < resized_epochs else None

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        """Augment the uint8 batch, then one optimisation step's loss."""
        images, labels = batch
        images = self.augment(images)
        targets = labels
        if self.mix is not None:
            images, targets = self.mix(images, labels)
        logits, loss = self._forward_loss(images, targets)
        if not self.automatic_optimization:
            self._sharpness_aware_step(images, targets, loss)
        acc = (logits.argmax(1) == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/acc", acc, prog_bar=False, on_step=False, on_epoch=True)
        return loss

    def _forward_loss(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(self._prepare(images, self._training_size()))
        loss = self.loss(logits, targets, images)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at step {self.global_step}; lower the "
                "learning rate or check the inputs"
            )
        return logits, loss

    def _sharpness_aware_step(
        self, images: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor
    ) -> None:
        """One SAM step (Foret et al., 2021) from ``loss`` at the current weights.

        Written here because neither torch nor Lightning ships SAM, and the PyPI SAM
        optimisers take a closure that Lightning would run through ``training_step`` again,
        drawing a new augmentation for the second pass. Batch-norm running statistics are
        updated by the first pass only.
        """
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            scale = self.config.sam_rho / (norm + 1e-12)
            moves = [p.grad * scale for p in params]
            for param, move in zip(params, moves, strict=True):
                param.add_(move)
        optimizer.zero_grad()
        with _frozen_norm_statistics(self.model):
            _, perturbed_loss = self._forward_loss(images, targets)
        self.manual_backward(perturbed_loss)
        with torch.no_grad():
            for param, move in zip(params, moves, strict=True):
                param.sub_(move)
        optimizer.step()
        self.lr_schedulers().step()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate validation loss and accuracy (summed over devices)."""
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate test loss and accuracy."""
        self._eval_step(batch, "test")

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        size = labels.shape[0]
        self.log(f"{stage}/loss", loss, batch_size=size, sync_dist=True)
        self.log(f"{stage}/acc", acc, batch_size=size, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict:
        """Optimiser and per-step learning-rate schedule from the config."""
        cfg = self.config
        # the model's parameters, plus any the loss learns (e.g. distillation projections)
        params = _parameter_groups(
            [p for p in self.parameters() if p.requires_grad],
            cfg.weight_decay,
            cfg.norm_bias_weight_decay,
        )
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params,
                lr=cfg.lr,
                momentum=cfg.momentum,
                nesterov=True,
                weight_decay=cfg.weight_decay,
            )
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = _make_schedule(optimizer, cfg, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


@contextlib.contextmanager
def _frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Keep batch-norm running statistics and batch counts unchanged inside the block."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked) for m in norms]
    for module in norms:
        module.momentum = 0.0  # running <- running: the block's batches leave no trace
        if module.num_batches_tracked is not None:
            module.num_batches_tracked = module.num_batches_tracked.clone()
    try:
        yield
    finally:
        for module, (momentum, count) in zip(norms, saved, strict=True):
            module.momentum = momentum
            module.num_batches_tracked = count


def _parameter_groups(
    params: list[nn.Parameter], weight_decay: float, norm_bias_weight_decay: float | None
) -> list[dict]:
    """Optimiser groups: 1-d parameters (norm scales/shifts, biases) get their own decay."""
    if norm_bias_weight_decay is None or norm_bias_weight_decay == weight_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    flat = [p for p in params if p.ndim <= 1]
    rest = [p for p in params if p.ndim > 1]
    groups = [
        {"params": rest, "weight_decay": weight_decay},
        {"params": flat, "weight_decay": norm_bias_weight_decay},
    ]
    return [group for group in groups if group["params"]]


def _make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=max(cfg.warmup, 1e-3)
        )
    warmup = int(cfg.warmup * total_steps)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup))
        )

    def cosine_with_warmup(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup)
