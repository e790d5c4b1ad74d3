"""Scene-classification datasets (EuroSAT RGB, UC Merced, any image folder) as uint8 tensors.

:func:`load_dataset` finds the images in any of the usual folder layouts, checks the class
folders, reads the official split files (or generates a seeded stratified split), decodes
every image once into a cached array and returns a :class:`SceneDataset` holding the three
splits as ``uint8`` tensors ready for batching.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from . import download as _dl
from .decode import _bad_files_error, _decode_images, _Decoded, _probe_sizes
from .errors import DatasetError
from .splits import (
    SPLITS,
    _check_fractions,
    _find_split_files,
    _fingerprint,
    _generate_split,
    _is_official,
    _limit_per_class,
    _read_splits,
    _stem_index,
    _write_split_files,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

EUROSAT_CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
UCMERCED_CLASSES = (
    "agricultural",
    "airplane",
    "baseballdiamond",
    "beach",
    "buildings",
    "chaparral",
    "denseresidential",
    "forest",
    "freeway",
    "golfcourse",
    "harbor",
    "intersection",
    "mediumresidential",
    "mobilehomepark",
    "overpass",
    "parkinglot",
    "river",
    "runway",
    "sparseresidential",
    "storagetanks",
    "tenniscourt",
)


@dataclass(frozen=True)
class _Spec:
    """What is known about one dataset: classes, layouts, defaults, split-file prefix."""

    name: str
    title: str
    classes: tuple[str, ...] | None
    layouts: tuple[str, ...]  # sub-folders of data_dir tried in order; "" is data_dir itself
    default_size: tuple[int, int] | None
    split_prefix: str
    example: str  # example image path relative to data_dir, for messages
    extract_to: str  # sub-folder of data_dir that the archive is unpacked into


_SPECS = {
    "eurosat": _Spec(
        "eurosat",
        "EuroSAT RGB",
        EUROSAT_CLASSES,
        ("EuroSAT/2750", "eurosat/2750", "2750", "EuroSAT_RGB", ""),
        (64, 64),
        "eurosat",
        "EuroSAT/2750/AnnualCrop/AnnualCrop_1.jpg",
        "EuroSAT",
    ),
    "ucmerced": _Spec(
        "ucmerced",
        "UC Merced Land Use",
        UCMERCED_CLASSES,
        ("UCMerced_LandUse/Images", "Images", ""),
        (256, 256),
        "uc_merced",
        "UCMerced_LandUse/Images/agricultural/agricultural00.tif",
        "",
    ),
    "imagefolder": _Spec(
        "imagefolder",
        "image folder",
        None,
        ("",),
        None,
        "imagefolder",
        "<class>/<image>.jpg",
        "",
    ),
}
_ALIASES = {"uc_merced": "ucmerced", "uc-merced": "ucmerced", "image_folder": "imagefolder"}


@dataclass(eq=False)
class Split:
    """One split, fully decoded.

    Attributes:
        images: ``torch.uint8`` tensor ``(N, 3, H, W)``.
        labels: ``torch.int64`` tensor ``(N,)`` of class indices.
        files: Image paths relative to the dataset root (``<class>/<file>``), row order.
    """

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, images={tuple(self.images.shape)})"


@dataclass(eq=False)
class SceneDataset:
    """A loaded dataset: three decoded splits plus where they came from.

    Build it with :func:`load_dataset`.

    Attributes:
        name: Canonical dataset name (``eurosat``, ``ucmerced``, ``imagefolder``).
        root: The class-folder root actually used.
        classes: Sorted class folder names; index = label.
        image_size: ``(height, width)`` of every image tensor.
        split_source: Human-readable origin of the split.
        split_fingerprint: SHA-256 hex over the splits' sorted file lists.
        splits: ``{"train": Split, "val": Split, "test": Split}``.
        skipped: Relative paths of bad files left out (``skip_bad_files=True``).
        split_dir: Folder of the split files used, or None for a generated split.
        cache_path: The decode cache file, or None if it could not be written.
    """

    name: str
    root: Path
    classes: list[str]
    image_size: tuple[int, int]
    split_source: str
    split_fingerprint: str
    splits: dict[str, Split]
    skipped: list[str] = field(default_factory=list)
    split_dir: Path | None = None
    cache_path: Path | None = None
    _info: dict[str, Any] = field(default_factory=dict, repr=False)
    _entry_names: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _stats: tuple[tuple[float, ...], tuple[float, ...]] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(self.splits[s])}" for s in SPLITS)
        return (
            f"SceneDataset({self.name!r}, root={str(self.root)!r}, classes={self.num_classes}, "
            f"image_size={self.image_size}, {counts})"
        )

    def info(self) -> dict[str, Any]:
        """Counts and provenance: per class and split, sizes on disk, where it looked.

        Returns:
            A JSON-serialisable dict (used by ``satcompress data info``).
        """
        per_split = {
            split: dict(Counter(self.classes[i] for i in self.splits[split].labels.tolist()))
            for split in SPLITS
        }
        return {
            "name": self.name,
            "root": str(self.root),
            "classes": list(self.classes),
            "image_size": list(self.image_size),
            "split_source": self.split_source,
            "split_dir": str(self.split_dir) if self.split_dir else None,
            "split_fingerprint": self.split_fingerprint,
            "counts": {split: len(self.splits[split]) for split in SPLITS},
            "per_split_per_class": {
                split: {c: per_split[split].get(c, 0) for c in self.classes} for split in SPLITS
            },
            "skipped_bad_files": len(self.skipped),
            "skipped_files": list(self.skipped),
            "cache_path": str(self.cache_path) if self.cache_path else None,
            **self._info,
        }

    def write_split_files(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``<prefix>-{train,val,test}.txt`` recording exactly the images used.

        One basename per line, no trailing newline: the official format. Names read from
        split files are written as they were read (so an unlimited official split is
        reproduced byte for byte); a basename shared by several classes is written as
        ``<class>/<file>``.

        Args:
            folder: Destination folder (created if missing).

        Returns:
            The three paths written.
        """
        prefix = _SPECS[self.name].split_prefix
        return _write_split_files(Path(folder), prefix, self._split_names())

    def _split_names(self) -> dict[str, list[str]]:
        """Per split, the names to write: as read from the split files, else basenames."""
        if self._entry_names:
            return self._entry_names
        all_files = [f for split in SPLITS for f in self.splits[split].files]
        base_counts = Counter(PurePosixPath(f).name for f in all_files)
        return {
            split: [
                PurePosixPath(f).name if base_counts[PurePosixPath(f).name] == 1 else f
                for f in self.splits[split].files
            ]
            for split in SPLITS
        }

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation over the train split, for x = uint8 / 255.

        Returns:
            ``(mean, std)``, each a tuple of 3 floats.
        """
        if self._stats is None:
            self._stats = _channel_stats(self.splits["train"].images)
        return self._stats


def _channel_stats(images: torch.Tensor) -> tuple[tuple, tuple]:
    """Exact per-channel mean/std of ``images / 255``, from a 256-bin histogram per channel."""
    if images.shape[0] == 0:
        raise DatasetError("cannot compute channel statistics: the train split is empty")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean) / 255)
        stds.append(float(var.sqrt()) / 255)
    return tuple(means), tuple(stds)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(_SPECS)


def dataset_classes(name: str) -> tuple[str, ...] | None:
    """The class names of a named dataset, index = label (None: an image folder's own).

    Raises:
        DatasetError: For an unknown dataset name.
    """
    classes = _get_spec(name).classes
    return tuple(sorted(classes)) if classes else None


def default_image_size(name: str) -> tuple[int, int] | None:
    """The ``(height, width)`` a named dataset loads at by default.

    Returns:
        The size, or None for an unknown name or an image folder (whose size is its images').
    """
    try:
        return _get_spec(name).default_size
    except DatasetError:
        return None


def load_dataset(
    name: str,
    data_dir: str | os.PathLike,
    *,
    split_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | Sequence[int] | None = None,
    skip_bad_files: bool = False,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    limit_per_class: int | None = None,
    progress: bool = True,
) -> SceneDataset:
    """Find, check, split and decode a scene-classification dataset.

    Args:
        name: ``eurosat``, ``ucmerced`` (or ``uc_merced``) or ``imagefolder``; any case.
        data_dir: Folder holding the data in one of the known layouts: for EuroSAT
            ``EuroSAT/2750/<Class>/``, ``eurosat/2750/``, ``2750/`` or the class folders
            themselves; for UC Merced ``UCMerced_LandUse/Images/<class>/``, ``Images/`` or
            the class folders; for imagefolder the class folders.
        split_dir: Folder of split files ``<prefix>-{train,val,test}.txt``. None uses
            ``<data_dir>/splits`` if it holds this dataset's files (not for imagefolder),
            else generates a split.
        download: Fetch the official archive and split files into ``data_dir`` first
            (skipped for what is already there).
        image_size: Side or ``(height, width)``; None is the dataset default (64 EuroSAT,
            256 UC Merced; imagefolder: the common size of its images, if they share one).
            Images of another size are resized (bilinear, antialiased).
        skip_bad_files: Leave out images that cannot be decoded (listed in ``skipped``)
            instead of raising.
        cache_dir: Decode cache folder; None is ``$SATCOMPRESS_CACHE`` or
            ``~/.cache/satcompress``.
        seed: Seed of a generated split.
        fractions: Train/val/test fractions of a generated split.
        limit_per_class: Keep at most this many images per class in each split (the first
            ones in split order), for quick runs.
        progress: Show progress bars while downloading and decoding.

    Returns:
        The loaded :class:`SceneDataset`.

    Raises:
        DatasetError: Anything the user can fix; the message says what and how.
    """
    spec = _get_spec(name)
    data_dir = Path(data_dir).expanduser()
    size = _parse_size(image_size)
    fractions = _check_fractions(fractions)
    if limit_per_class is not None and limit_per_class < 1:
        raise DatasetError(f"limit_per_class must be a positive integer, got {limit_per_class}")
    if download:
        _download_dataset(spec, data_dir, progress)
    root, looked = _find_root(spec, data_dir, download)
    classes, by_class, ignored = _scan_classes(spec, root)
    disk_files = [f for cls in classes for f in by_class[cls]]
    plan = _plan_splits(spec, data_dir, split_dir, root, by_class, disk_files, seed, fractions)
    if limit_per_class is not None:
        plan.limit(limit_per_class)
    why = "as asked (image_size)" if size else _default_size_reason(spec)
    size = size or _default_size(spec, root, plan.used_files())
    decoded = _decode_images(
        spec.name, root, sorted(plan.used_files()), size, cache_dir, progress, why=why
    )
    if decoded.skipped and not skip_bad_files:
        raise _bad_files_error(root, decoded.skipped)
    ds = _assemble(spec, root, classes, size, plan, decoded)
    short = _check_class_sizes(ds, fractions if plan.split_dir is None else None)
    ds._info.update(
        looked_in=[str(p) for p in looked],
        ignored_folders=ignored,
        images_on_disk=len(disk_files),
        per_class_on_disk={c: len(by_class[c]) for c in classes},
        unused_on_disk=len(disk_files) - plan.n_listed,
        dropped_by_limit=plan.n_listed - len(plan.used_files()),
        image_sizes_on_disk=decoded.sizes,
        decoded_from_cache=decoded.from_cache,
        classes_missing_from_splits=short,
    )
    return ds


def _get_spec(name: str) -> _Spec:
    """The spec of a dataset name (case-insensitive, aliases accepted)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _SPECS:
        raise DatasetError(
            f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())} "
            "(or uc_merced for ucmerced)"
        )
    return _SPECS[key]


def _parse_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``int`` or ``(h, w)`` -> ``(h, w)``; None stays None."""
    if image_size is None:
        return None
    if isinstance(image_size, int | str):
        image_size = (image_size, image_size)
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise DatasetError(
            f"image_size must be a positive int or (height, width), got {image_size!r}"
        )
    return size  # type: ignore[return-value]


def _default_size(spec: _Spec, root: Path, files: Sequence[str]) -> tuple[int, int]:
    """The dataset's default size, or (imagefolder) the one size all images share."""
    if spec.default_size is not None:
        return spec.default_size
    sizes = _probe_sizes(root, files)
    if len(sizes) == 1:
        return next(iter(sizes))
    if not sizes:
        raise DatasetError(f"no readable image under {root}; cannot tell the image size")
    found = ", ".join(f"{w}x{h}: {n}" for (h, w), n in sizes.most_common(5))
    raise DatasetError(
        f"the images under {root} have different sizes ({found}); pass image_size "
        "(--image-size) to resize them all to one size"
    )


def _default_size_reason(spec: _Spec) -> str:
    """Why images are decoded at the default size, for the log line before decoding."""
    if spec.default_size is not None:
        return f"the {spec.name} default; image_size (--image-size) changes it"
    return "the size of the images on disk; image_size (--image-size) decodes them smaller"


def _download_dataset(spec: _Spec, data_dir: Path, progress: bool) -> None:
    """Fetch and unpack the archive unless the images are there; fetch missing split files."""
    archive = _dl._archive_for(spec.name)
    if archive is None:
        raise DatasetError(
            f"{spec.name} has nothing to download: put the images in {data_dir}/<class>/ "
            "and run without --download"
        )
    if _locate_root(spec, data_dir) is None:
        path = _dl._download_resource(archive, data_dir, progress)
        _dl._extract_zip(path, data_dir / spec.extract_to)
    split_folder = data_dir / "splits"
    for resource in _dl._split_resources_for(spec.name).values():
        if not (split_folder / resource.filename).is_file():
            _dl._download_resource(resource, split_folder, progress)


def _candidates(spec: _Spec, data_dir: Path) -> list[Path]:
    """The folders that may be the class-folder root, in order of preference."""
    return [data_dir / sub if sub else data_dir for sub in spec.layouts]


def _locate_root(spec: _Spec, data_dir: Path) -> Path | None:
    """First candidate folder holding at least one expected class folder (any, for imagefolder)."""
    for folder in _candidates(spec, data_dir):
        if not folder.is_dir():
            continue
        subdirs = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
        wanted = subdirs & set(spec.classes) if spec.classes is not None else subdirs
        if wanted:
            return folder
    return None


def _find_root(spec: _Spec, data_dir: Path, downloaded: bool) -> tuple[Path, list[Path]]:
    """Locate the class-folder root or raise an error saying where it looked and what to do."""
    looked = _candidates(spec, data_dir)
    root = _locate_root(spec, data_dir)
    if root is not None:
        return root, looked
    if not data_dir.is_dir():
        problem = f"the data folder {data_dir} does not exist"
    else:
        problem = f"no {spec.title} class folders found; looked in: " + ", ".join(
            str(p) for p in looked
        )
    archive = _dl._archive_for(spec.name)
    fix = (
        f"Pass --data-dir pointing at the folder that holds the images (so that "
        f"<data-dir>/{spec.example} exists)"
    )
    if archive is not None and not downloaded:
        fix += f", or add --download to fetch {archive.url} into {data_dir}"
    elif archive is not None:
        fix += f"; the archive {data_dir / archive.filename} did not unpack to a known layout"
    raise DatasetError(f"{spec.title}: {problem}. {fix}.")


def _scan_classes(spec: _Spec, root: Path) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Class names, their image files (relative, sorted) and ignored folders.

    Raises:
        DatasetError: An expected class folder is missing or a class folder has no image.
    """
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if spec.classes is None and "splits" in folders and not _image_files(root, "splits"):
        folders.remove("splits")  # a folder of split files beside the class folders
    classes = sorted(spec.classes) if spec.classes else folders
    ignored = sorted(set(folders) - set(classes))
    if ignored:
        log.warning("ignoring folders that are not %s classes in %s: %s", spec.title, root, ignored)
    missing = [c for c in classes if c not in folders]
    if missing:
        raise DatasetError(
            f"{spec.title}: {len(missing)} of {len(classes)} class folders missing under {root}: "
            f"{', '.join(missing)}. The dataset is incomplete: re-extract the archive there "
            "(or use --download with a fresh --data-dir)"
        )
    if len(classes) < 2:
        raise DatasetError(
            f"{spec.title}: {len(classes)} class folder under {root} "
            f"({', '.join(classes) or 'none'}): a classifier needs at least two classes. Put "
            f"each class's images in a folder of its own, {root}/<class>/<image>"
        )
    by_class = {c: _image_files(root, c) for c in classes}
    empty = [c for c in classes if not by_class[c]]
    if empty:
        raise DatasetError(
            f"{spec.title}: class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}) "
            f"under {root}: {', '.join(str(root / c) for c in empty)}. Put the images there "
            "or remove the folders (for imagefolder)"
        )
    return classes, by_class, ignored


def _image_files(root: Path, cls: str) -> list[str]:
    """Sorted ``<cls>/<file>`` paths of the images directly inside ``root/cls``."""
    with os.scandir(root / cls) as entries:
        names = [
            e.name
            for e in entries
            if not e.name.startswith(".")
            and e.name.lower().endswith(IMAGE_EXTENSIONS)
            and e.is_file()
        ]
    return [f"{cls}/{n}" for n in sorted(names)]


@dataclass
class _SplitPlan:
    """Which files go to which split, and where that came from."""

    files: dict[str, list[str]]
    source: str
    split_dir: Path | None = None
    entries: dict[str, list[str]] = field(default_factory=dict)
    n_listed: int = 0

    def limit(self, n: int) -> None:
        """Keep at most ``n`` images per class in each split (with their written names)."""
        self.source += f"; limited to {n} per class and split"
        for split in SPLITS:
            kept = set(_limit_per_class(self.files[split], n))
            if self.entries:
                pairs = zip(self.files[split], self.entries[split], strict=True)
                self.entries[split] = [e for f, e in pairs if f in kept]
            self.files[split] = [f for f in self.files[split] if f in kept]

    def used_files(self) -> list[str]:
        """All files in any split."""
        return [f for split in SPLITS for f in self.files[split]]


def _plan_splits(
    spec: _Spec,
    data_dir: Path,
    split_dir: str | os.PathLike | None,
    root: Path,
    by_class: dict[str, list[str]],
    disk_files: list[str],
    seed: int,
    fractions: tuple[float, float, float],
) -> _SplitPlan:
    """Read the split files (given or auto-found) or generate a stratified split."""
    prefix = None if spec.name == "imagefolder" else spec.split_prefix
    paths = None
    if split_dir is not None:
        folder = Path(split_dir).expanduser()
        paths = _find_split_files(folder, prefix) if folder.is_dir() else None
        if paths is None:
            raise DatasetError(
                f"no split files {prefix or '<name>'}-{{train,val,test}}.txt in {folder}. Put "
                "them there, pass another --split-dir, or leave --split-dir out to generate a "
                "split"
            )
    elif prefix is not None and (data_dir / "splits").is_dir():
        paths = _find_split_files(data_dir / "splits", prefix)
    if paths is None:
        files = _generate_split(by_class, seed, fractions)
        pct = "/".join(f"{100 * f:g}" for f in fractions)
        return _SplitPlan(
            files, f"generated: stratified {pct}, seed {seed}", n_listed=len(disk_files)
        )
    files, entries = _read_splits(paths, _stem_index(disk_files), root)
    folder = paths["train"].parent
    if _is_official(paths, {s: r.md5 for s, r in _dl._split_resources_for(spec.name).items()}):
        source = f"official split files (MD5 verified) in {folder}"
    elif spec.name == "imagefolder":
        source = f"split files in {folder}"
    else:
        source = f"split files in {folder} (not the official ones: MD5s differ from TorchGeo's)"
    n_listed = sum(len(v) for v in files.values())
    return _SplitPlan(files, source, folder, entries, n_listed)


def _assemble(
    spec: _Spec,
    root: Path,
    classes: list[str],
    size: tuple[int, int],
    plan: _SplitPlan,
    decoded: _Decoded,
) -> SceneDataset:
    """Cut the decoded array into the three splits (dropping skipped files) and wrap it."""
    row = {rel: i for i, rel in enumerate(decoded.files)}
    index = {c: i for i, c in enumerate(classes)}
    splits, entries = {}, {}
    for split in SPLITS:
        keep = [i for i, f in enumerate(plan.files[split]) if f in row]
        files = [plan.files[split][i] for i in keep]
        rows = np.fromiter((row[f] for f in files), dtype=np.int64, count=len(files))
        images = torch.from_numpy(np.ascontiguousarray(decoded.images[rows]))
        labels = torch.tensor([index[PurePosixPath(f).parent.as_posix()] for f in files])
        splits[split] = Split(images, labels.to(torch.int64), files)
        if plan.entries:
            entries[split] = [plan.entries[split][i] for i in keep]
    _check_all_classes_left(classes, splits, root, plan.source)
    final = {split: splits[split].files for split in SPLITS}
    return SceneDataset(
        name=spec.name,
        root=root,
        classes=list(classes),
        image_size=size,
        split_source=plan.source,
        split_fingerprint=_fingerprint(final),
        splits=splits,
        skipped=sorted(decoded.skipped),
        split_dir=plan.split_dir,
        cache_path=decoded.cache_path,
        _entry_names=entries,
    )


def _check_all_classes_left(
    classes: list[str], splits: dict[str, Split], root: Path, source: str
) -> None:
    """Refuse a class with no image in any split (never train on fewer classes silently)."""
    present = set()
    for split in splits.values():
        present.update(split.labels.unique().tolist())
    lost = [c for i, c in enumerate(classes) if i not in present]
    if lost:
        raise DatasetError(
            f"class(es) {', '.join(lost)} under {root} have no image in any split "
            f"({source}): either the split files list none of them (pass another "
            "--split-dir) or all of their images are broken (replace them)"
        )


def _check_class_sizes(
    ds: SceneDataset, fractions: tuple[float, float, float] | None
) -> dict[str, dict[str, int]]:
    """Report the classes missing from a split that holds other classes, with their counts.

    Such a class is not measured there (its validation or test accuracy is unknown): a
    warning names it with its images per split. A class missing from the train split is
    refused: the model would never see it.

    Args:
        ds: The assembled dataset.
        fractions: The train/val/test fractions of a generated split (None: split files).

    Returns:
        ``{class: {split: images}}`` of the classes missing from some split.

    Raises:
        DatasetError: A class has no training image.
    """
    counts = {s: Counter(ds.splits[s].labels.tolist()) for s in SPLITS}
    used = [s for s in SPLITS if len(ds.splits[s])]
    short = {}
    for index, cls in enumerate(ds.classes):
        per_split = {s: counts[s].get(index, 0) for s in SPLITS}
        if not all(per_split[s] for s in used):
            short[cls] = per_split
    if not short:
        return {}
    listed = "; ".join(
        f"{c}: {sum(n.values())} images ({', '.join(f'{n[s]} {s}' for s in SPLITS)})"
        for c, n in short.items()
    )
    need = _images_for_every_split(fractions) if fractions else None
    hint = f" (a generated split needs {need} images of a class to fill every split)"
    hint = hint if need else ""
    untrained = [c for c, n in short.items() if not n["train"]]
    if untrained:
        raise DatasetError(
            f"{ds.name} under {ds.root}: class(es) {', '.join(untrained)} have no training "
            f"image ({ds.split_source}). Counts: {listed}. Add images, or pass split files "
            "that put some of each class in train"
        )
    log.warning(
        "%s under %s: class(es) too small to appear in every split, not measured where "
        "missing: %s%s. Add images to them", ds.name, ds.root, listed, hint,
    )  # fmt: skip
    return short


def _images_for_every_split(fractions: tuple[float, float, float]) -> int | None:
    """The fewest images of a class that a generated split puts in every non-empty split."""
    wanted = [s for s, f in zip(SPLITS, fractions, strict=True) if f > 0]
    for n in range(1, 1001):
        parts = _generate_split({"c": [str(i) for i in range(n)]}, 0, fractions)
        if all(parts[s] for s in wanted):
            return n
    return None
