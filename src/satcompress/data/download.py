"""Download and unpack dataset archives: MD5-checked, crash-safe, with actionable errors.

The URLs and MD5s are TorchGeo's / torchvision's mirrors of the official archives and of the
official split files of Neumann et al. (2019), "In-domain representation learning for remote
sensing". They are module constants, read at call time, so tests can point them elsewhere.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from satcompress.utils.io import file_digest

from .errors import DatasetError

_TIMEOUT_S = 60
_CHUNK = 1 << 20


class _ChecksumError(DatasetError):
    """A download arrived but its MD5 is wrong (not retried on a mirror)."""


@dataclass(frozen=True)
class Resource:
    """One downloadable file: its name on disk, where to fetch it and its MD5.

    Attributes:
        filename: File name to store it under.
        url: Primary URL.
        md5: Expected MD5 hex digest, or None to skip the check.
        mirrors: Further URLs tried in order when the primary one fails.
    """

    filename: str
    url: str
    md5: str | None = None
    mirrors: tuple[str, ...] = ()

    @property
    def urls(self) -> tuple[str, ...]:
        """The primary URL followed by the mirrors."""
        return (self.url, *self.mirrors)


_HF_EUROSAT = "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
_HF_UCMERCED = (
    "https://hf.co/datasets/torchgeo/ucmerced/resolve/7c5ef3454d9b1cccfa7ccde0c01fc8f00a45909a/"
)
_GCS_SPLITS = "https://storage.googleapis.com/remote_sensing_representations/"

#: EuroSAT RGB archive (torchvision's mirror); unpacks to ``2750/<Class>/<Class>_<n>.jpg``.
EUROSAT_ARCHIVE = Resource(
    "EuroSAT.zip",
    _HF_EUROSAT + "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
    "c8fa014336c82ac7804f0398fcb19387",
)
#: Official EuroSAT split files (TorchGeo's URLs and MD5s).
EUROSAT_SPLIT_FILES = {
    "train": Resource(
        "eurosat-train.txt", _GCS_SPLITS + "eurosat-train.txt", "908f142e73d6acdf3f482c5e80d851b1"
    ),
    "val": Resource(
        "eurosat-val.txt", _GCS_SPLITS + "eurosat-val.txt", "95de90f2aa998f70a3b2416bfe0687b4"
    ),
    "test": Resource(
        "eurosat-test.txt", _GCS_SPLITS + "eurosat-test.txt", "7ae5ab94471417b6e315763121e67c5f"
    ),
}
#: UC Merced archive (TorchGeo's mirror); unpacks to ``UCMerced_LandUse/Images/<class>/*.tif``.
UCMERCED_ARCHIVE = Resource(
    "UCMerced_LandUse.zip",
    _HF_UCMERCED + "UCMerced_LandUse.zip",
    "5b7ec56793786b6dc8a908e8854ac0e4",
    mirrors=("http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",),
)
#: Official UC Merced split files (TorchGeo's URLs and MD5s).
UCMERCED_SPLIT_FILES = {
    split: Resource(
        f"uc_merced-{split}.txt",
        _HF_UCMERCED + f"uc_merced-{split}.txt",
        md5,
        mirrors=(_GCS_SPLITS + f"uc_merced-{split}.txt",),
    )
    for split, md5 in (
        ("train", "f2fb12eb2210cfb53f93f063a35ff374"),
        ("val", "11ecabfc52782e5ea6a9c7c0d263aca0"),
        ("test", "046aff88472d8fc07c4678d03749e28d"),
    )
}


def _archive_for(name: str) -> Resource | None:
    """The official archive of dataset ``name`` (read at call time), or None."""
    return {"eurosat": EUROSAT_ARCHIVE, "ucmerced": UCMERCED_ARCHIVE}.get(name)


def _split_resources_for(name: str) -> dict[str, Resource]:
    """The official split files of dataset ``name`` (read at call time); empty if none."""
    return {"eurosat": EUROSAT_SPLIT_FILES, "ucmerced": UCMERCED_SPLIT_FILES}.get(name, {})


def download_url(
    url: str, dest_path: str | os.PathLike, md5: str | None = None, progress: bool = True
) -> Path:
    """Download ``url`` (http, https or file) to ``dest_path``, safely.

    The data goes to a temporary file beside the destination, is checked against ``md5``
    and only then renamed into place, so an interrupted or corrupt download never leaves a
    half file under the final name. A destination that already exists with the right MD5
    (or any MD5 when ``md5`` is None) is kept and not fetched again.

    Args:
        url: Address to fetch.
        dest_path: File to write (its folder is created).
        md5: Expected MD5 hex digest; None skips the check.
        progress: Show a tqdm progress bar.

    Returns:
        The destination path.

    Raises:
        DatasetError: The download failed (naming the URL and where to put the file if
            fetched by hand) or the MD5 did not match (expected and actual; the bad file
            is removed).
    """
    dest = Path(dest_path).expanduser()
    if dest.is_file():
        if md5 is None or file_digest(dest) == md5.lower():
            return dest
        dest.unlink()  # a stale or corrupt copy: fetch it again
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as err:
        raise DatasetError(
            f"cannot write the download to {dest.parent} ({err}); pass a writable --data-dir"
        ) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            actual = _fetch(url, handle, dest, progress)
            handle.flush()
            os.fsync(handle.fileno())
        if md5 is not None and actual != md5.lower():
            raise _ChecksumError(
                f"MD5 mismatch for {dest.name} downloaded from {url}: expected {md5.lower()}, "
                f"got {actual}. The bad file was removed. The download was corrupted or the "
                f"mirror changed: try again, or fetch the file by hand and put it at {dest}."
            )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _fetch(url: str, handle: BinaryIO, dest: Path, progress: bool) -> str:
    """Stream ``url`` into ``handle``; return the MD5 of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": "satcompress"})
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise DatasetError(_download_failed(url, dest, err)) from err
    if total is not None and received != total:
        raise DatasetError(
            _download_failed(url, dest, f"connection closed after {received} of {total} bytes")
        )
    return digest.hexdigest()


def _download_failed(url: str, dest: Path, reason: object) -> str:
    """Message for a failed download: the URL, the reason and the manual alternative."""
    if isinstance(reason, urllib.error.HTTPError):
        reason = f"HTTP {reason.code} {reason.reason}"
    else:
        reason = getattr(reason, "reason", reason)
    return (
        f"could not download {url}: {reason}. Check the network connection (or proxy), or "
        f"download the file by hand (for example `curl -L -o {dest} '{url}'`) and put it at "
        f"{dest}, then run again."
    )


def _download_resource(resource: Resource, folder: Path, progress: bool) -> Path:
    """Fetch ``resource`` into ``folder``, trying its mirrors in turn.

    Raises:
        DatasetError: Every URL failed; the message lists them all. An MD5 mismatch is
            raised at once (a mirror serving other bytes is not silently skipped).
    """
    failures = []
    for url in resource.urls:
        try:
            return download_url(url, folder / resource.filename, resource.md5, progress)
        except _ChecksumError:
            raise
        except DatasetError as err:
            failures.append(str(err))
    if len(failures) == 1:
        raise DatasetError(failures[0])
    raise DatasetError(
        f"could not download {resource.filename} from any of its {len(failures)} URLs:\n  "
        + "\n  ".join(failures)
    )


def _extract_zip(archive: Path, dest_dir: Path) -> None:
    """Unpack ``archive`` into ``dest_dir`` via a temporary folder, then move it into place.

    Entries that already exist are kept, so a re-run completes an interrupted extraction
    without touching what is there.

    Raises:
        DatasetError: The archive is not a valid zip or holds paths outside its folder.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract-"))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                _check_members(zf, staging, archive)
                zf.extractall(staging)
        except (zipfile.BadZipFile, EOFError) as err:
            raise DatasetError(
                f"{archive} is not a valid zip archive ({err}): delete it and run again with "
                "--download, or replace it with a good copy."
            ) from err
        except OSError as err:
            raise DatasetError(
                f"could not extract {archive} into {dest_dir} ({err}); free some disk space or "
                "pass another --data-dir"
            ) from err
        _merge_tree(staging, dest_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_members(zf: zipfile.ZipFile, staging: Path, archive: Path) -> None:
    """Refuse archive members that would land outside ``staging`` (zip-slip)."""
    root = staging.resolve()
    for name in zf.namelist():
        target = (root / name).resolve()
        if target != root and root not in target.parents:
            raise DatasetError(f"{archive} holds an unsafe path {name!r}; refusing to extract it")


def _merge_tree(src: Path, dest: Path) -> None:
    """Move everything under ``src`` into ``dest``, keeping files that already exist."""
    for entry in src.iterdir():
        target = dest / entry.name
        if not target.exists():
            os.replace(entry, target)
        elif entry.is_dir() and target.is_dir():
            _merge_tree(entry, target)
