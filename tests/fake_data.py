"""Seeded generator of tiny fake datasets in the real folder layouts (TorchGeo style).

Every image has a class-dependent colour plus a little seeded noise and a gradient, so a
small model can learn the classes. File names, class names and folder layouts are the real
ones. Run as a script to write a full set of examples::

    python tests/fake_data.py OUT_DIR
"""

from __future__ import annotations

import colorsys
import hashlib
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from satcompress.data.datasets import EUROSAT_CLASSES, UCMERCED_CLASSES  # the real class lists

#: UC Merced images written at another size than 256x256: (class, number) -> (width, height).
UCMERCED_ODD_SIZES = {
    ("airplane", 1): (253, 256),
    ("buildings", 0): (247, 247),
    ("harbor", 2): (257, 257),
}
EUROSAT_LAYOUTS = {
    "official": "EuroSAT/2750",
    "torchvision": "eurosat/2750",
    "2750": "2750",
    "zenodo": "EuroSAT_RGB",
    "flat": "",
}
SPLITS = ("train", "val", "test")


def class_colour(index: int, n_classes: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour for class ``index`` of ``n_classes``."""
    r, g, b = colorsys.hsv_to_rgb(index / n_classes, 0.8, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def fake_image(
    rng: np.random.Generator, colour: Sequence[int], size: tuple[int, int]
) -> Image.Image:
    """An RGB image of ``size`` (width, height): ``colour`` plus a gradient and noise."""
    w, h = size
    ramp = np.linspace(-20, 20, w, dtype=np.float32)[None, :, None]
    block = max(1, min(w, h) // 32)  # blocky noise keeps big images small on disk
    noise = rng.normal(0, 6, (-(-h // block), -(-w // block), 3)).astype(np.float32)
    noise = noise.repeat(block, axis=0).repeat(block, axis=1)[:h, :w]
    pixels = np.asarray(colour, np.float32)[None, None, :] + ramp + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext in (".jpg", ".jpeg"):
        img.save(path, "JPEG", quality=95)
    elif ext in (".tif", ".tiff"):
        img.save(path, "TIFF", compression="tiff_lzw")
    else:
        img.save(path)


def make_eurosat(
    root: str | Path,
    per_class: int = 8,
    seed: int = 0,
    layout: str = "official",
    classes: Sequence[str] = EUROSAT_CLASSES,
) -> Path:
    """Write fake EuroSAT RGB: ``<Class>/<Class>_<n>.jpg``, n = 1..per_class, 64x64.

    Args:
        root: Data folder.
        per_class: Images per class.
        seed: Noise seed.
        layout: ``official`` (``root/EuroSAT/2750``), ``torchvision`` (``root/eurosat/2750``),
            ``2750`` (``root/2750``), ``zenodo`` (``root/EuroSAT_RGB``) or ``flat`` (class
            folders in ``root``).
        classes: Class names to write (default: all ten).

    Returns:
        The class-folder root.
    """
    class_root = Path(root) / EUROSAT_LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    for cls in classes:
        colour = class_colour(EUROSAT_CLASSES.index(cls), len(EUROSAT_CLASSES))
        for n in range(1, per_class + 1):
            _save(fake_image(rng, colour, (64, 64)), class_root / cls / f"{cls}_{n}.jpg")
    return class_root


def make_ucmerced(root: str | Path, per_class: int = 5, seed: int = 0, ext: str = "tif") -> Path:
    """Write fake UC Merced: ``UCMerced_LandUse/Images/<class>/<class><nn>.<ext>``.

    Images are 256x256 except those in :data:`UCMERCED_ODD_SIZES` (when ``nn`` exists).

    Returns:
        The class-folder root (``.../Images``).
    """
    class_root = Path(root) / "UCMerced_LandUse" / "Images"
    rng = np.random.default_rng(seed)
    for i, cls in enumerate(UCMERCED_CLASSES):
        colour = class_colour(i, len(UCMERCED_CLASSES))
        for n in range(per_class):
            size = UCMERCED_ODD_SIZES.get((cls, n), (256, 256))
            _save(fake_image(rng, colour, size), class_root / cls / f"{cls}{n:02d}.{ext}")
    return class_root


def make_imagefolder(
    root: str | Path,
    classes: Sequence[str] = ("cloud", "field", "water"),
    per_class: int = 6,
    size: tuple[int, int] | Sequence[tuple[int, int]] = (32, 32),
    seed: int = 0,
    ext: str = "png",
) -> Path:
    """Write ``root/<class>/img_<n>.<ext>``.

    Args:
        size: One (width, height) for all images, or a list cycled over the images.

    Returns:
        ``root``.
    """
    root = Path(root)
    sizes = [tuple(size)] if isinstance(size[0], int) else [tuple(s) for s in size]
    rng = np.random.default_rng(seed)
    k = 0
    for i, cls in enumerate(classes):
        for n in range(per_class):
            img = fake_image(rng, class_colour(i, len(classes)), sizes[k % len(sizes)])
            _save(img, root / cls / f"img_{n}.{ext}")
            k += 1
    return root


def write_split_files(
    folder: str | Path, prefix: str, names: Mapping[str, Sequence[str]]
) -> dict[str, Path]:
    """Write ``<prefix>-{train,val,test}.txt`` in the official format (no final newline)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        paths[split] = folder / f"{prefix}-{split}.txt"
        paths[split].write_text("\n".join(names[split]))
    return paths


def make_split_files(
    folder: str | Path,
    prefix: str,
    class_root: str | Path,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
    ext: str | None = None,
) -> dict[str, list[str]]:
    """Split the images under ``class_root`` per class and write official-format split files.

    Args:
        folder: Where to write ``<prefix>-{train,val,test}.txt``.
        prefix: ``eurosat``, ``uc_merced``, ...
        class_root: Folder of class folders to list.
        seed: Shuffle seed (a different procedure than the library's generated split).
        fractions: Train/val/test fractions per class.
        ext: Replace each basename's extension by this one (``".tif"``), as in the
            official UC Merced files that name ``.tif`` images.

    Returns:
        The basenames written per split.
    """
    rng = np.random.default_rng(seed + 1000)
    names: dict[str, list[str]] = {split: [] for split in SPLITS}
    for cls_dir in sorted(p for p in Path(class_root).iterdir() if p.is_dir()):
        files = sorted(p.name for p in cls_dir.iterdir() if p.is_file())
        if ext is not None:
            files = [Path(f).stem + ext for f in files]
        order = rng.permutation(len(files))
        a = max(1, round(len(files) * fractions[0]))
        b = a + max(1, round(len(files) * fractions[1]))
        for split, idx in zip(SPLITS, (order[:a], order[a:b], order[b:]), strict=True):
            names[split] += [files[j] for j in idx]
    write_split_files(folder, prefix, names)
    return names


def make_zip(folder: str | Path, zip_path: str | Path) -> str:
    """Zip ``folder`` with member names starting at ``folder.name``; return the zip's MD5."""
    folder, zip_path = Path(folder), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder.parent).as_posix())
    return md5_of(zip_path)


def md5_of(path: str | Path) -> str:
    """MD5 hex digest of a file."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def truncate_file(path: str | Path, keep: float = 0.5) -> Path:
    """Cut a file to the first ``keep`` fraction of its bytes (a truncated download)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def main(out: str | Path) -> None:
    """Write every kind of fake dataset, split files and archives under ``out``."""
    out = Path(out)
    eurosat = make_eurosat(out / "data", per_class=8)
    make_split_files(out / "data" / "splits", "eurosat", eurosat)
    ucm = make_ucmerced(out / "data", per_class=5)
    make_split_files(out / "data" / "splits", "uc_merced", ucm)
    make_imagefolder(out / "imagefolder")
    archives = out / "archives"
    make_eurosat(archives / "src-eurosat", per_class=4, layout="2750")
    make_zip(archives / "src-eurosat" / "2750", archives / "EuroSAT.zip")
    make_zip(ucm.parent, archives / "UCMerced_LandUse.zip")
    for path in sorted(out.rglob("*.zip")) + sorted(out.rglob("*.txt")):
        print(f"{md5_of(path)}  {path}")
    print(f"fake datasets written under {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/fake_data.py OUT_DIR")
    main(sys.argv[1])
