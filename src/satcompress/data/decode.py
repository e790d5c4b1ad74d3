"""Decode every image once into one uint8 array, cached as a ``.npy`` file.

The cache key is a hash of the dataset name, the resolved class-folder root, the sorted file
list with each file's size and modification time, and the target image size, so any change
on disk (or a different size) makes a new entry, and an unchanged dataset is never decoded
twice. Each entry is ``<key>.npy`` (shape ``(N, 3, H, W)``, in file-list order, bad files
left out) plus ``<key>.json`` (the files, the bad ones with their errors, the sizes seen).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from satcompress.runtime.images import fit_image, strict_decoding
from satcompress.utils.cache import cache_root
from satcompress.utils.io import atomic_open, atomic_write_json, read_json

from .errors import DatasetError

_CACHE_VERSION = 1
_MAX_LISTED = 10
log = logging.getLogger(__name__)


@dataclass
class _Decoded:
    """Result of decoding (or loading from cache) a list of images.

    Attributes:
        images: ``(N, 3, H, W)`` uint8, rows in the order of ``files``.
        files: Relative paths decoded successfully.
        skipped: Relative path -> error, for files that could not be decoded.
        sizes: ``"WxH"`` -> count of the on-disk sizes seen.
        cache_path: The ``.npy`` file, or None if the cache could not be written.
        from_cache: Whether the decode was skipped thanks to the cache.
    """

    images: np.ndarray
    files: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    cache_path: Path | None = None
    from_cache: bool = False


def _default_cache_dir() -> Path:
    """``$SATCOMPRESS_CACHE`` or ``~/.cache/satcompress``."""
    return cache_root()


def _cache_key(name: str, root: Path, files: Sequence[str], size: tuple[int, int]) -> str:
    """SHA-256 over name, resolved root, (file, bytes, mtime) list and target size."""
    digest = hashlib.sha256()
    head = {"v": _CACHE_VERSION, "name": name, "root": str(root.resolve()), "size": list(size)}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for rel in files:
        st = (root / rel).stat()
        digest.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _decode_images(
    name: str,
    root: Path,
    files: Sequence[str],
    size: tuple[int, int],
    cache_dir: Path | None,
    progress: bool = True,
    why: str = "",
) -> _Decoded:
    """Decode ``files`` (relative to ``root``) to ``size``, or load them from the cache.

    Before decoding, it logs what it decodes, at which size (and ``why`` that size), into
    which cache file, and how large that file will be.

    Args:
        name: Dataset name (part of the cache key and file name).
        root: Class-folder root.
        files: Relative image paths, in the row order wanted.
        size: Target ``(height, width)``; other sizes are resized (bilinear, antialiased).
        cache_dir: Cache folder; None uses the default.
        progress: Show a tqdm bar while decoding.
        why: Why ``size`` (for the log line), e.g. ``"as asked (image_size)"``.

    Returns:
        The decoded images; unreadable files are listed in ``skipped``, not raised.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    key = _cache_key(name, root, files, size)
    npy = cache_dir / f"{name}-{size[0]}x{size[1]}-{key[:24]}.npy"
    cached = _load_cache(npy, key, size)
    if cached is not None:
        return cached
    log.info(decode_message(name, root, len(files), size, npy, why))
    decoded = _decode_all(root, files, size, progress, desc=f"decoding {name}")
    decoded.cache_path = _save_cache(npy, key, decoded)
    return decoded


def decode_message(
    name: str, root: Path, count: int, size: tuple[int, int], npy: Path, why: str = ""
) -> str:
    """``decoding N <name> images from ROOT at HxW (why) into CACHE (about X MB)``."""
    why = f" ({why})" if why else ""
    return (
        f"decoding {count} {name} images from {root} at {size[1]}x{size[0]}{why} into the "
        f"decode cache {npy} (about {format_size(count * 3 * size[0] * size[1])})"
    )


def format_size(n: float) -> str:
    """Bytes in decimal units: ``201.0 MB``, ``2.9 MB``, ``512 B``."""
    units = ("B", "kB", "MB", "GB", "TB")
    power = 0
    while n >= 1000 and power < len(units) - 1:
        n /= 1000
        power += 1
    return f"{n:.0f} B" if power == 0 else f"{n:.1f} {units[power]}"


def _decode_all(
    root: Path, files: Sequence[str], size: tuple[int, int], progress: bool, desc: str
) -> _Decoded:
    """Decode every file into one preallocated array; collect the failures."""
    out = np.empty((len(files), 3, *size), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    skipped: dict[str, str] = {}
    sizes: Counter[str] = Counter()
    with strict_decoding():
        for i, rel in enumerate(tqdm(files, desc=desc, unit="img", disable=not progress)):
            try:
                pixels, (w, h) = _decode_one(root / rel, size)
            except Exception as err:  # noqa: BLE001 - any decoder failure means a bad file
                skipped[rel] = f"{type(err).__name__}: {err}"
                continue
            out[i] = pixels.transpose(2, 0, 1)
            ok[i] = True
            sizes[f"{w}x{h}"] += 1
    if skipped:
        out = out[ok]
    kept = [rel for rel, good in zip(files, ok, strict=True) if good]
    return _Decoded(out, kept, skipped, dict(sizes))


def _decode_one(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image to ``(H, W, 3)`` uint8 RGB at ``size``; also return its own (w, h).

    The rule (RGB, one bilinear Pillow resize) is :func:`satcompress.runtime.images.fit_image`,
    shared with the device runtime so that both prepare pixels identically.
    """
    with Image.open(path) as img:
        return fit_image(img, size), img.size


def _probe_sizes(root: Path, files: Sequence[str]) -> Counter[tuple[int, int]]:
    """``(height, width)`` counts from the image headers (no decoding; bad files ignored)."""
    sizes: Counter[tuple[int, int]] = Counter()
    for rel in files:
        try:
            with Image.open(root / rel) as img:
                sizes[(img.height, img.width)] += 1
        except Exception:  # noqa: BLE001, S112 - reported properly at decode time
            continue
    return sizes


def _load_cache(npy: Path, key: str, size: tuple[int, int]) -> _Decoded | None:
    """The cached entry if present and consistent, else None (a broken entry is ignored)."""
    meta_path = npy.with_suffix(".json")
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = read_json(meta_path)
        images = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable decode cache %s: %s", npy, err)
        return None
    expected = (len(meta.get("files", [])), 3, *size)
    if meta.get("key") != key or images.shape != expected or images.dtype != np.uint8:
        log.warning("ignoring inconsistent decode cache %s", npy)
        return None
    return _Decoded(
        images, meta["files"], meta["skipped"], meta["sizes"], cache_path=npy, from_cache=True
    )


def _save_cache(npy: Path, key: str, decoded: _Decoded) -> Path | None:
    """Write the array then its metadata, both atomically; on failure warn and go on."""
    try:
        _atomic_save_npy(npy, decoded.images)
        meta = {
            "key": key,
            "version": _CACHE_VERSION,
            "files": decoded.files,
            "skipped": decoded.skipped,
            "sizes": decoded.sizes,
        }
        atomic_write_json(npy.with_suffix(".json"), meta)
    except OSError as err:
        log.warning("could not write decode cache %s (%s); continuing without it", npy, err)
        return None
    return npy


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, fsync, then rename over it.

    Same guarantee as :func:`satcompress.utils.io.atomic_write_bytes`, but streamed, so a
    large array is not copied into one bytes object first.
    """
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _bad_files_error(root: Path, skipped: dict[str, str]) -> DatasetError:
    """DatasetError listing the images that could not be decoded."""
    items = list(skipped.items())
    shown = "\n  ".join(f"{root / rel}: {err}" for rel, err in items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return DatasetError(
        f"{len(items)} image(s) under {root} could not be decoded:\n  {shown}{more}\n"
        "Replace them with good copies (for example re-extract the archive, or --download into "
        "a fresh --data-dir), or pass --skip-bad-files to leave them out."
    )
