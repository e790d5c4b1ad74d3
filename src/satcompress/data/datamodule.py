"""Lightning data module over a loaded :class:`SceneDataset`: cheap, seeded uint8 batches.

All images already sit in one uint8 tensor per split, so a batch is a single ``index_select``
(the dataset implements ``__getitems__``) and the collate function passes it through. There
is no augmentation or normalisation here; the training step does that batch-wise.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .datasets import SceneDataset, Split


class _SplitDataset(Dataset):
    """Map-style dataset over a :class:`Split` with whole-batch indexing."""

    def __init__(self, split: Split) -> None:
        self.images = split.images
        self.labels = split.labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch with one tensor index: ``(uint8 (B, 3, H, W), int64 (B,))``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


def _passthrough(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate function for batches that ``__getitems__`` already built."""
    return batch


class SceneDataModule(L.LightningDataModule):
    """Train/val/test loaders of uint8 image batches and int64 labels.

    Args:
        ds: The dataset from :func:`~satcompress.data.load_dataset`.
        batch_size: Training batch size.
        eval_batch_size: Validation and test batch size.
        num_workers: DataLoader worker processes; 0 (the default) is fastest here, since a
            batch is one tensor index.
        seed: Seed of the training shuffle; each ``train_dataloader()`` call restarts it.
        pin_memory: Pin batches for faster host-to-GPU copies; None means "if CUDA is
            available".
    """

    def __init__(
        self,
        ds: SceneDataset,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_size}, {eval_batch_size}")
        self.dataset = ds
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return self.dataset.classes

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.dataset.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of every image."""
        return self.dataset.image_size

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches from a generator seeded with ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader("train", self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in split order."""
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test batches in split order."""
        return self._loader("test", self.eval_batch_size)

    def _loader(
        self,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        return DataLoader(
            _SplitDataset(self.dataset.splits[split]),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=False,
            collate_fn=_passthrough,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
