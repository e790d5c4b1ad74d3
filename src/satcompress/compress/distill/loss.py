"""The distillation loss: hard-label cross-entropy + Hinton KD (+ optional feature matching).

:class:`DistillationLoss` implements the :class:`satcompress.train.TrainingLoss` protocol, so
any stage that trains through :class:`satcompress.train.ClassificationTask` (training,
pruning fine-tuning, QAT) can learn from a teacher by passing it as ``loss=``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from satcompress.compress.distill.config import DistillConfig
from satcompress.compress.distill.features import FeatureDistiller
from satcompress.preprocess import AugmentConfig, InputSpec, Preprocess, mixing_enabled


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's KD term: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch.

    The ``T^2`` factor keeps the gradient scale independent of the temperature.

    Args:
        student_logits: ``(B, K)`` student logits.
        teacher_logits: ``(B, K)`` teacher logits (no gradient needed).
        temperature: Softmax temperature ``T > 0``.

    Returns:
        A scalar tensor (float32, or float64 for float64 logits).
    """
    t = float(temperature)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16/fp16 -> fp32
    log_p_student = F.log_softmax(student_logits.to(dtype) / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.to(dtype) / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


def cache_enabled(config: DistillConfig, augment: AugmentConfig | None) -> bool:
    """Whether teacher logits are cached: ``memory``, or ``auto`` with repeating augmentations.

    ``auto`` caches when the augmented images repeat exactly across epochs (only flips and
    90-degree rotations: each image has at most 8 variants; no MixUp/CutMix) and no feature
    layers are used.
    """
    if config.teacher_cache != "auto":
        return config.teacher_cache == "memory"
    if config.feature_layers or augment is None:
        return False
    repeating = augment.shift == 0 and augment.brightness == 0 and augment.contrast == 0
    return repeating and not mixing_enabled(augment)


class FrozenTeacher:
    """A teacher in eval mode with its own preprocessing, kept outside the module tree.

    Not being an ``nn.Module`` attribute, it is not in the student task's parameters,
    optimiser, ``state_dict`` (Lightning checkpoints, saved weights) or EMA average; deep
    copies (Lightning's EMA copies the task) share it instead of copying it. It follows the
    images to their device on first use.

    Args:
        model: The teacher network (frozen in place: eval mode, ``requires_grad=False``).
        spec: The teacher's input resolution and normalisation.
        channels_last: Run it in channels-last memory format (faster convolutions on CPU).
    """

    def __init__(self, model: nn.Module, spec: InputSpec, channels_last: bool = True) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().requires_grad_(False).to(memory_format=self.memory_format)
        self.spec = spec
        self.preprocess = Preprocess(spec)

    def __deepcopy__(self, memo: dict) -> FrozenTeacher:
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the teacher's normalised input at its resolution."""
        self._follow(images.device)
        return self.preprocess(images).contiguous(memory_format=self.memory_format)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a uint8 batch, computed under ``inference_mode``."""
        with torch.inference_mode():
            logits = self.model(self.prepare(images))
        return logits.float().clone()  # a normal tensor that autograd may save

    def _follow(self, device: torch.device) -> None:
        if self.preprocess.mean.device != device:
            self.model.to(device)
            self.preprocess.to(device)


class TeacherCache:
    """Teacher logits per augmented image, keyed by a digest of the image's exact bytes.

    Exact by construction: a hit returns what the (frozen, deterministic, eval-mode) teacher
    returned for byte-identical input. Shared by deep copies.
    """

    def __init__(self) -> None:
        self.rows: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __deepcopy__(self, memo: dict) -> TeacherCache:
        return self

    def keys(self, images: torch.Tensor) -> list[bytes]:
        """One 16-byte BLAKE2 digest per image."""
        array = images.detach().cpu().numpy()
        return [
            hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()
            for a in array
        ]

    def lookup(self, keys: Sequence[bytes]) -> list[int]:
        """Indices of the keys not cached yet (and counts hits and misses)."""
        missing = [i for i, key in enumerate(keys) if key not in self.rows]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return missing

    def store(self, keys: Sequence[bytes], logits: torch.Tensor) -> None:
        """Remember the logits of these images."""
        for key, row in zip(keys, logits.detach().cpu(), strict=True):
            self.rows[key] = row.clone()

    def gather(self, keys: Sequence[bytes], device: torch.device) -> torch.Tensor:
        """The cached logits of these images, stacked."""
        return torch.stack([self.rows[key] for key in keys]).to(device)


class _TeacherClock:
    """Seconds spent on the teacher (inference, preprocessing, cache); shared by copies."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0

    def __deepcopy__(self, memo: dict) -> _TeacherClock:
        return self


class DistillationLoss(nn.Module):
    """``(1 - alpha) * CE + alpha * T^2 * KL(teacher || student) + feature_weight * features``.

    The teacher sees the same augmented uint8 images as the student, prepared with its own
    :class:`InputSpec` (resolution and normalisation). It is frozen, in eval mode, run under
    ``inference_mode`` in channels-last format, and kept out of this module's parameters and
    state (see :class:`FrozenTeacher`); only the feature projections are trainable.

    Args:
        teacher: The teacher network (its class order must match the student's).
        teacher_spec: The teacher's input resolution and normalisation.
        config: Temperature, weights, feature layers, cache mode.
        label_smoothing: Label smoothing of the hard-label cross-entropy.
        student: The student network; needed for feature distillation (it gets forward
            hooks on the named layers; it is not stored as a submodule).
        student_spec: The student's input spec (to probe its feature shapes).
        image_size: The dataset's image ``(height, width)`` (inputs of size ``None`` specs).
        channels_last: Run the teacher in channels-last memory format.
        augment: The training augmentation (decides ``teacher_cache="auto"``).

    Attributes:
        features: The :class:`FeatureDistiller`, or None without feature layers (or with
            ``feature_weight=0``).
        cache: The :class:`TeacherCache`, or None when caching is off.
    """

    def __init__(
        self,
        teacher: nn.Module,
        teacher_spec: InputSpec,
        config: DistillConfig | None = None,
        *,
        label_smoothing: float = 0.0,
        student: nn.Module | None = None,
        student_spec: InputSpec | None = None,
        image_size: tuple[int, int] = (64, 64),
        channels_last: bool = True,
        augment: AugmentConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or DistillConfig()
        self.teacher = FrozenTeacher(teacher, teacher_spec, channels_last)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.cache = TeacherCache() if cache_enabled(self.config, augment) else None
        self._clock = _TeacherClock()
        self.features = None
        if self.config.feature_layers and self.config.feature_weight > 0:
            if student is None:
                raise ValueError("feature distillation needs the student network: pass student=")
            self.features = FeatureDistiller(
                self.config.feature_layers,
                student,
                self.teacher.model,
                probe_input(student_spec or InputSpec(), image_size).to(_device_of(student)),
                self.teacher.prepare(torch.zeros(2, 3, *image_size, dtype=torch.uint8)),
                normalize=self.config.feature_normalize,
            )

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor:
        """The training loss of one step.

        Args:
            logits: The student's ``(B, K)`` logits.
            labels: ``(B,)`` class indices.
            images: The augmented uint8 ``(B, 3, H, W)`` batch the student saw.

        Returns:
            A scalar loss.
        """
        cfg = self.config
        loss = logits.new_zeros((), dtype=torch.float32)
        if cfg.alpha < 1:
            loss = loss + (1 - cfg.alpha) * self.criterion(logits.float(), labels)
        if cfg.alpha > 0 or self.features is not None:
            teacher_logits = self.teacher_logits(images)
            if cfg.alpha > 0:
                loss = loss + cfg.alpha * kd_loss(logits, teacher_logits, cfg.temperature)
        if self.features is not None:
            loss = loss + cfg.feature_weight * self.features()
        return loss

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 logits for a uint8 batch (from the cache where possible)."""
        started = time.perf_counter()
        if self.cache is None:
            logits = self.teacher(images)
        else:
            logits = self._cached_logits(images)
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)
        self._clock.seconds += time.perf_counter() - started
        self._clock.images += int(images.shape[0])
        return logits

    def _cached_logits(self, images: torch.Tensor) -> torch.Tensor:
        keys = self.cache.keys(images)
        missing = self.cache.lookup(keys)
        if missing:
            index = torch.tensor(missing, device=images.device)
            computed = self.teacher(images.index_select(0, index))
            self.cache.store([keys[i] for i in missing], computed)
        return self.cache.gather(keys, images.device)

    @property
    def teacher_seconds(self) -> float:
        """Seconds spent on the teacher so far (this process)."""
        return self._clock.seconds

    def stats(self) -> dict[str, float | int | str]:
        """Teacher time and cache figures for the training summary."""
        out: dict[str, float | int | str] = {
            "teacher_s": round(self._clock.seconds, 3),
            "teacher_images": self._clock.images,
            "teacher_cache": "memory" if self.cache is not None else "none",
        }
        if self.cache is not None:
            out["teacher_cache_hits"] = self.cache.hits
            out["teacher_cache_misses"] = self.cache.misses
        return out

    def remove_hooks(self) -> None:
        """Detach the feature hooks from student and teacher (no-op without features)."""
        if self.features is not None:
            self.features.remove_hooks()


def probe_input(spec: InputSpec, image_size: tuple[int, int]) -> torch.Tensor:
    """A zero float batch of two at the model's input resolution."""
    size = spec.size or tuple(image_size)
    return torch.zeros(2, 3, *size)


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
