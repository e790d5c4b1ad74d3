"""Downloads over file:// and a local HTTP server; load_dataset(download=True) end to end."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_data import make_eurosat, make_split_files, make_ucmerced, make_zip, md5_of
from satcompress.data import DatasetError, download_url, load_dataset
from satcompress.data import download as dl

SPLITS = ("train", "val", "test")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple[Path, str]]:
    """A folder served by a local HTTP server on 127.0.0.1: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/EuroSAT.zip"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_url_file_scheme(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"satellite" * 1000)
    dest = download_url(
        src.as_uri(), tmp_path / "out" / "copy.bin", md5=md5_of(src), progress=False
    )
    assert dest == tmp_path / "out" / "copy.bin"
    assert dest.read_bytes() == src.read_bytes()
    assert leftovers(dest.parent) == ["copy.bin"]  # no temporary file left


def test_download_url_http(tmp_path, http_root):
    folder, base = http_root
    (folder / "a.txt").write_text("hello")
    dest = download_url(f"{base}/a.txt", tmp_path / "a.txt", md5=md5_of(folder / "a.txt"))
    assert dest.read_text() == "hello"


def test_md5_mismatch_raises_and_leaves_nothing(tmp_path, http_root):
    folder, base = http_root
    (folder / "a.txt").write_text("hello")
    with pytest.raises(DatasetError) as err:
        download_url(f"{base}/a.txt", tmp_path / "out" / "a.txt", md5="0" * 32, progress=False)
    msg = str(err.value)
    assert "0" * 32 in msg and md5_of(folder / "a.txt") in msg and f"{base}/a.txt" in msg
    assert leftovers(tmp_path / "out") == []


def test_unreachable_url_raises_naming_it(tmp_path):
    url = closed_port_url()
    with pytest.raises(DatasetError) as err:
        download_url(url, tmp_path / "out" / "EuroSAT.zip", progress=False)
    msg = str(err.value)
    assert url in msg and str(tmp_path / "out" / "EuroSAT.zip") in msg and "by hand" in msg
    assert leftovers(tmp_path / "out") == []


def test_http_error_and_missing_file_raise(tmp_path, http_root):
    _, base = http_root
    with pytest.raises(DatasetError, match="404"):
        download_url(f"{base}/missing.zip", tmp_path / "m.zip", progress=False)
    with pytest.raises(DatasetError, match="could not download file:"):
        download_url((tmp_path / "nope.zip").as_uri(), tmp_path / "m.zip", progress=False)


def test_existing_good_file_is_kept_and_bad_one_replaced(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    dest = tmp_path / "dest.bin"
    dest.write_bytes(b"abc")
    download_url(closed_port_url(), dest, md5=md5_of(src))  # no fetch needed
    dest.write_bytes(b"stale")
    download_url(src.as_uri(), dest, md5=md5_of(src), progress=False)
    assert dest.read_bytes() == b"abc"


def test_mirror_used_when_primary_fails(tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    resource = dl.Resource("f.txt", closed_port_url(), md5_of(src), mirrors=(src.as_uri(),))
    path = dl._download_resource(resource, tmp_path / "out", progress=False)
    assert path.read_text() == "x"
    broken = dl.Resource("f.txt", closed_port_url(), None, mirrors=(closed_port_url(),))
    with pytest.raises(DatasetError, match="any of its 2 URLs"):
        dl._download_resource(broken, tmp_path / "out2", progress=False)


def fake_eurosat_release(folder: Path) -> tuple[dl.Resource, dict[str, dl.Resource]]:
    """EuroSAT.zip (``2750/<Class>/...``) and split files in ``folder``, as file:// resources."""
    class_root = make_eurosat(folder / "src", per_class=4, layout="2750")
    md5 = make_zip(class_root, folder / "EuroSAT.zip")
    make_split_files(folder, "eurosat", class_root)
    archive = dl.Resource("EuroSAT.zip", (folder / "EuroSAT.zip").as_uri(), md5)
    splits = {
        s: dl.Resource(f"eurosat-{s}.txt", (folder / f"eurosat-{s}.txt").as_uri(), md5_of(p))
        for s in SPLITS
        for p in [folder / f"eurosat-{s}.txt"]
    }
    return archive, splits


def test_load_dataset_downloads_eurosat(tmp_path, monkeypatch):
    archive, splits = fake_eurosat_release(tmp_path / "release")
    monkeypatch.setattr(dl, "EUROSAT_ARCHIVE", archive)
    monkeypatch.setattr(dl, "EUROSAT_SPLIT_FILES", splits)
    data = tmp_path / "data"
    ds = load_dataset("eurosat", data, download=True, cache_dir=tmp_path / "c", progress=False)
    assert ds.root == data / "EuroSAT" / "2750"
    assert ds.split_source.startswith("official split files (MD5 verified)")
    assert sum(len(ds.splits[s]) for s in SPLITS) == 40
    assert sorted(p.name for p in (data / "splits").iterdir()) == [
        "eurosat-test.txt",
        "eurosat-train.txt",
        "eurosat-val.txt",
    ]
    assert not list(data.rglob(".extract-*")) and not list(data.rglob("*.part"))
    # Already there: a second download=True fetches nothing (the URLs are now dead).
    dead = dl.Resource("EuroSAT.zip", closed_port_url(), archive.md5)
    monkeypatch.setattr(dl, "EUROSAT_ARCHIVE", dead)
    again = load_dataset("eurosat", data, download=True, cache_dir=tmp_path / "c", progress=False)
    assert again.split_fingerprint == ds.split_fingerprint


def test_load_dataset_downloads_ucmerced_over_http(tmp_path, http_root, monkeypatch):
    folder, base = http_root
    class_root = make_ucmerced(tmp_path / "src", per_class=3)
    md5 = make_zip(class_root.parent, folder / "UCMerced_LandUse.zip")
    make_split_files(folder, "uc_merced", class_root)
    monkeypatch.setattr(
        dl,
        "UCMERCED_ARCHIVE",
        dl.Resource("UCMerced_LandUse.zip", f"{base}/UCMerced_LandUse.zip", md5),
    )
    splits = {
        s: dl.Resource(
            f"uc_merced-{s}.txt", f"{base}/uc_merced-{s}.txt", md5_of(folder / f"uc_merced-{s}.txt")
        )
        for s in SPLITS
    }
    monkeypatch.setattr(dl, "UCMERCED_SPLIT_FILES", splits)
    data = tmp_path / "data"
    ds = load_dataset(
        "ucmerced", data, download=True, image_size=32, cache_dir=tmp_path / "c", progress=False
    )
    assert ds.root == data / "UCMerced_LandUse" / "Images"
    assert ds.split_source.startswith("official split files (MD5 verified)")
    assert len(ds.classes) == 21


def test_load_dataset_download_checksum_mismatch(tmp_path, monkeypatch):
    archive, splits = fake_eurosat_release(tmp_path / "release")
    monkeypatch.setattr(dl, "EUROSAT_ARCHIVE", dl.Resource("EuroSAT.zip", archive.url, "f" * 32))
    monkeypatch.setattr(dl, "EUROSAT_SPLIT_FILES", splits)
    data = tmp_path / "data"
    with pytest.raises(DatasetError, match="MD5 mismatch"):
        load_dataset("eurosat", data, download=True, cache_dir=tmp_path / "c", progress=False)
    assert leftovers(data) == []


def test_load_dataset_download_unreachable(tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setattr(dl, "EUROSAT_ARCHIVE", dl.Resource("EuroSAT.zip", url, None))
    with pytest.raises(DatasetError) as err:
        load_dataset("eurosat", tmp_path / "data", download=True, progress=False)
    assert url in str(err.value) and str(tmp_path / "data" / "EuroSAT.zip") in str(err.value)


def test_bad_zip_raises(tmp_path, monkeypatch):
    bogus = tmp_path / "EuroSAT.zip"
    bogus.write_bytes(b"PK not really a zip")
    monkeypatch.setattr(dl, "EUROSAT_ARCHIVE", dl.Resource("EuroSAT.zip", bogus.as_uri(), None))
    with pytest.raises(DatasetError, match="not a valid zip"):
        load_dataset("eurosat", tmp_path / "data", download=True, progress=False)


def test_imagefolder_has_nothing_to_download(tmp_path):
    with pytest.raises(DatasetError, match="nothing to download"):
        load_dataset("imagefolder", tmp_path, download=True, progress=False)
