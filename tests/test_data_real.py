"""Integration tests on the real EuroSAT and UC Merced copies in ../shared/data."""

from __future__ import annotations

import time

import pytest
import torch

from satcompress.data import load_dataset
from satcompress.data.datasets import _SPECS, _scan_classes
from satcompress.data.splits import _generate_split

SPLITS = ("train", "val", "test")


def test_real_eurosat_with_shared_split_files(shared_data, tmp_path):
    ds = load_dataset("eurosat", shared_data, limit_per_class=5, cache_dir=tmp_path, progress=False)
    assert ds.root == shared_data / "EuroSAT" / "2750"
    assert len(ds.classes) == 10 and ds.image_size == (64, 64)
    assert ds.split_dir == shared_data / "splits"
    assert "not the official ones" in ds.split_source
    assert "limited to 5 per class" in ds.split_source
    for split in SPLITS:
        assert torch.bincount(ds.splits[split].labels, minlength=10).tolist() == [5] * 10
    info = ds.info()
    assert info["images_on_disk"] == 27000 and info["unused_on_disk"] == 0
    assert info["image_sizes_on_disk"] == {"64x64": 150}


def test_real_ucmerced_official_split_files(shared_data, tmp_path):
    ds = load_dataset(
        "uc_merced", shared_data, limit_per_class=2, cache_dir=tmp_path, progress=False
    )
    assert ds.root == shared_data / "UCMerced_LandUse" / "Images"
    assert len(ds.classes) == 21 and ds.image_size == (256, 256)
    assert ds.split_source.startswith(
        f"official split files (MD5 verified) in {shared_data / 'splits'}"
    )
    assert all(f.endswith(".jpg") for s in SPLITS for f in ds.splits[s].files)
    assert ds.splits["train"].images.shape == (42, 3, 256, 256)
    assert ds.info()["images_on_disk"] == 2100


def test_generated_split_reproduces_shared_eurosat_files(shared_data):
    root = shared_data / "EuroSAT" / "2750"
    _, by_class, _ = _scan_classes(_SPECS["eurosat"], root)
    generated = _generate_split(by_class, seed=0, fractions=(0.6, 0.2, 0.2))
    for split in SPLITS:
        expected = (shared_data / "splits" / f"eurosat-{split}.txt").read_text().split("\n")
        assert [f.split("/")[1] for f in generated[split]] == expected


@pytest.mark.slow
def test_full_eurosat_decode_and_generated_split_files(shared_data, tmp_path):
    start = time.perf_counter()
    ds = load_dataset("eurosat", shared_data / "EuroSAT", cache_dir=tmp_path, progress=False)
    decode_s = time.perf_counter() - start
    assert ds.split_source == "generated: stratified 60/20/20, seed 0"
    assert [len(ds.splits[s]) for s in SPLITS] == [16200, 5400, 5400]
    assert decode_s < 60, f"decoding 27,000 EuroSAT images took {decode_s:.1f} s"
    written = ds.write_split_files(tmp_path / "run")
    for path in written:
        assert path.read_bytes() == (shared_data / "splits" / path.name).read_bytes()
    start = time.perf_counter()
    again = load_dataset("eurosat", shared_data, cache_dir=tmp_path, progress=False)
    assert again.info()["decoded_from_cache"] is True
    assert time.perf_counter() - start < decode_s
    assert again.split_fingerprint == ds.split_fingerprint  # same images per split


@pytest.mark.slow
def test_full_ucmerced_official_split_round_trip(shared_data, tmp_path):
    ds = load_dataset("ucmerced", shared_data, cache_dir=tmp_path, progress=False)
    assert [len(ds.splits[s]) for s in SPLITS] == [1260, 420, 420]
    assert sum(ds.info()["image_sizes_on_disk"].values()) == 2100
    assert ds.info()["image_sizes_on_disk"]["256x256"] == 2056
    for path in ds.write_split_files(tmp_path / "run"):
        assert path.read_bytes() == (shared_data / "splits" / path.name).read_bytes()
    rerun = load_dataset(
        "ucmerced", shared_data, split_dir=tmp_path / "run", cache_dir=tmp_path, progress=False
    )
    assert rerun.split_source.startswith("official split files (MD5 verified)")
