"""Train/val/test splits: read official-format split files, or generate a stratified split.

Split files hold one image basename per line (``AnnualCrop_1.jpg``, ``harbor22.tif``), as in
TorchGeo and Neumann et al. (2019). Entries are matched to images on disk by file stem, so a
``.tif`` name finds the ``.jpg`` of a re-encoded copy. An entry may also be a path relative
to the class-folder root (``Forest/Forest_1.jpg``) where a basename alone is ambiguous.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from satcompress.utils.io import atomic_write_bytes, file_digest

from .errors import DatasetError

SPLITS = ("train", "val", "test")
_MAX_LISTED = 10


def _split_paths(folder: Path, prefix: str) -> dict[str, Path]:
    """Paths of ``<prefix>-{train,val,test}.txt`` in ``folder`` (existing or not)."""
    return {split: folder / f"{prefix}-{split}.txt" for split in SPLITS}


def _find_split_files(folder: Path, prefix: str | None) -> dict[str, Path] | None:
    """The three split files in ``folder``, or None when none of them is there.

    Args:
        folder: Folder to look in.
        prefix: File name prefix (``eurosat``); None accepts any single ``<p>-*.txt`` set.

    Raises:
        DatasetError: Only some of the three files exist, or (prefix None) several sets do.
    """
    if prefix is None:
        prefixes = sorted(
            {p.name[: -len("-train.txt")] for p in folder.glob("*-train.txt") if p.is_file()}
        )
        if not prefixes:
            return None
        if len(prefixes) > 1:
            raise DatasetError(
                f"{folder} holds several sets of split files ({', '.join(prefixes)}); "
                "pass a --split-dir that holds exactly one <name>-{train,val,test}.txt set"
            )
        prefix = prefixes[0]
    paths = _split_paths(folder, prefix)
    present = [split for split, path in paths.items() if path.is_file()]
    if not present:
        return None
    if len(present) < len(SPLITS):
        missing = [str(paths[s]) for s in SPLITS if s not in present]
        raise DatasetError(
            f"incomplete split files in {folder}: missing {', '.join(missing)}. Add them, "
            "or pass a --split-dir holding all three (or none, to generate a split)"
        )
    return paths


def _read_split_file(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read split file {path}: {err}") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def _stem_index(files: Iterable[str]) -> dict[str, list[str]]:
    """Map each file stem to the relative paths having it."""
    index: dict[str, list[str]] = {}
    for rel in files:
        index.setdefault(PurePosixPath(rel).stem, []).append(rel)
    return index


def _resolve_entries(
    entries: Sequence[str], index: Mapping[str, list[str]], split_file: Path, root: Path
) -> list[str]:
    """Map split-file entries to relative image paths under ``root``.

    Raises:
        DatasetError: Some entries name no image on disk (listed), or a basename matches
            images in several class folders.
    """
    resolved, missing = [], []
    for entry in entries:
        matches = _match_entry(entry, index)
        if len(matches) > 1:
            raise DatasetError(
                f"split entry {entry!r} in {split_file} matches several images under {root}: "
                f"{', '.join(matches)}; write it as <class>/<file> to say which"
            )
        if matches:
            resolved.append(matches[0])
        else:
            missing.append(entry)
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED]) + (" ..." if len(missing) > _MAX_LISTED else "")
        raise DatasetError(
            f"{len(missing)} of {len(entries)} entries in split file {split_file} name no image "
            f"under {root} (matched by file stem): {shown}. Check --data-dir points at the "
            "complete dataset, or pass a --split-dir whose split files match these images"
        )
    return resolved


def _match_entry(entry: str, index: Mapping[str, list[str]]) -> list[str]:
    """Images matching one entry: by stem, and by class folder if the entry has one."""
    path = PurePosixPath(entry.replace("\\", "/"))
    matches = index.get(path.stem, [])
    if str(path.parent) not in ("", "."):
        matches = [m for m in matches if str(PurePosixPath(m).parent) == str(path.parent)]
    return matches


def _read_splits(
    paths: Mapping[str, Path], index: Mapping[str, list[str]], root: Path
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Read and resolve the three split files.

    Returns:
        ``(files, entries)``: per split, the relative image paths and the names as written.

    Raises:
        DatasetError: Missing entries, or an image listed twice (within or across splits).
    """
    files, entries = {}, {}
    for split in SPLITS:
        entries[split] = _read_split_file(paths[split])
        files[split] = _resolve_entries(entries[split], index, paths[split], root)
    _check_disjoint(files, paths)
    return files, entries


def _check_disjoint(files: Mapping[str, list[str]], paths: Mapping[str, Path]) -> None:
    """Refuse an image listed more than once, which would leak test images into training."""
    seen: dict[str, str] = {}
    for split in SPLITS:
        for rel in files[split]:
            if rel in seen:
                where = f"{paths[seen[rel]]} and {paths[split]}"
                if seen[rel] == split:
                    where = str(paths[split])
                raise DatasetError(
                    f"image {rel} is listed more than once (in {where}); "
                    "each image must be in exactly one split"
                )
            seen[rel] = split


def _generate_split(
    files_by_class: Mapping[str, Sequence[str]], seed: int, fractions: Sequence[float]
) -> dict[str, list[str]]:
    """Deterministic stratified split.

    Classes in sorted order, files of each class in sorted (string) order, one
    ``numpy.random.default_rng(seed)`` shuffling each class's list in turn; the first
    ``fractions[0]`` of each class go to train, the next ``fractions[1]`` to val, the rest
    to test (cut points rounded half up).
    """
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(fractions)[:2]
    out: dict[str, list[str]] = {split: [] for split in SPLITS}
    for cls in sorted(files_by_class):
        names = sorted(files_by_class[cls])
        rng.shuffle(names)
        a, b = (math.floor(len(names) * c + 0.5) for c in cuts)
        out["train"] += names[:a]
        out["val"] += names[a:b]
        out["test"] += names[b:]
    return out


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate train/val/test fractions: three non-negative numbers summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise DatasetError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
            f"got {tuple(fractions)}"
        )
    return values  # type: ignore[return-value]


def _limit_per_class(files: Sequence[str], limit: int) -> list[str]:
    """Keep at most ``limit`` images per class folder, the first ones in split order."""
    kept, counts = [], {}
    for rel in files:
        cls = PurePosixPath(rel).parent.as_posix()
        if counts.get(cls, 0) < limit:
            counts[cls] = counts.get(cls, 0) + 1
            kept.append(rel)
    return kept


def _fingerprint(files: Mapping[str, Sequence[str]]) -> str:
    """SHA-256 hex over the sorted file list of each split (order within a split ignored)."""
    payload = {split: sorted(files[split]) for split in SPLITS}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _is_official(paths: Mapping[str, Path], md5s: Mapping[str, str | None]) -> bool:
    """Whether all three split files match the official MD5s."""
    if not md5s or any(md5s.get(split) is None for split in SPLITS):
        return False
    return all(file_digest(paths[split]) == md5s[split] for split in SPLITS)


def _write_split_files(folder: Path, prefix: str, names: Mapping[str, Sequence[str]]) -> list[Path]:
    """Write ``<prefix>-{train,val,test}.txt`` atomically, one name per line, no final newline."""
    written = []
    for split, path in _split_paths(Path(folder), prefix).items():
        written.append(atomic_write_bytes(path, "\n".join(names[split]).encode()))
    return written
