"""Data layer on tiny fake datasets: layouts, splits, errors, decode cache, data module."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fake_data import (
    EUROSAT_CLASSES,
    UCMERCED_CLASSES,
    UCMERCED_ODD_SIZES,
    make_eurosat,
    make_imagefolder,
    make_split_files,
    make_ucmerced,
    md5_of,
    truncate_file,
    write_split_files,
)
from satcompress.data import (
    DatasetError,
    SceneDataModule,
    SceneDataset,
    Split,
    list_datasets,
    load_dataset,
)
from satcompress.data import download as dl

SPLITS = ("train", "val", "test")


def load(name: str, data_dir: Path, tmp_path: Path, **kwargs) -> SceneDataset:
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    return load_dataset(name, data_dir, progress=False, **kwargs)


def all_files(ds: SceneDataset) -> list[str]:
    return [f for s in SPLITS for f in ds.splits[s].files]


def test_public_surface():
    import satcompress.data as data

    assert list_datasets() == ["eurosat", "imagefolder", "ucmerced"]
    for name in data.__all__:
        assert getattr(data, name) is not None


@pytest.mark.parametrize(
    ("layout", "sub"),
    [
        ("official", "EuroSAT/2750"),
        ("torchvision", "eurosat/2750"),
        ("2750", "2750"),
        ("zenodo", "EuroSAT_RGB"),
        ("flat", ""),
    ],
)
def test_eurosat_layouts_are_found(tmp_path, layout, sub):
    make_eurosat(tmp_path / "data", per_class=3, layout=layout)
    ds = load("eurosat", tmp_path / "data", tmp_path)
    assert ds.root == (tmp_path / "data" / sub if sub else tmp_path / "data")
    assert ds.classes == sorted(EUROSAT_CLASSES)
    assert sum(len(ds.splits[s]) for s in SPLITS) == 30
    assert ds.split_source == "generated: stratified 60/20/20, seed 0"


def test_eurosat_class_root_given_directly(tmp_path, eurosat_root):
    ds = load("EuroSAT", eurosat_root / "EuroSAT" / "2750", tmp_path)
    assert ds.name == "eurosat"
    assert ds.root == eurosat_root / "EuroSAT" / "2750"


@pytest.mark.parametrize("sub", ["UCMerced_LandUse", "UCMerced_LandUse/Images"])
def test_ucmerced_layouts_are_found(tmp_path, ucmerced_root, sub):
    ds = load("uc_merced", ucmerced_root / sub, tmp_path, image_size=32)
    assert ds.name == "ucmerced"
    assert ds.root == ucmerced_root / "UCMerced_LandUse" / "Images"
    assert ds.classes == sorted(UCMERCED_CLASSES)


def test_split_tensors_labels_and_pixels(tmp_path, eurosat_root):
    ds = load("eurosat", eurosat_root, tmp_path)
    assert ds.classes == sorted(ds.classes)
    assert ds.image_size == (64, 64)
    for split in SPLITS:
        part = ds.splits[split]
        assert isinstance(part, Split)
        assert part.images.dtype == torch.uint8 and part.labels.dtype == torch.int64
        assert part.images.shape == (len(part.files), 3, 64, 64)
        for rel, label in zip(part.files, part.labels.tolist(), strict=True):
            assert rel.split("/")[0] == ds.classes[label]
    rel = ds.splits["val"].files[3]
    expected = np.asarray(Image.open(ds.root / rel).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(ds.splits["val"].images[3].numpy(), expected)


def test_splits_from_files(tmp_path, eurosat_root):
    ds = load("eurosat", eurosat_root, tmp_path)
    assert ds.split_dir == eurosat_root / "splits"
    assert "not the official" in ds.split_source and str(eurosat_root / "splits") in ds.split_source
    for split in SPLITS:
        names = (eurosat_root / "splits" / f"eurosat-{split}.txt").read_text().split("\n")
        assert [Path(f).name for f in ds.splits[split].files] == names


def test_explicit_split_dir_and_generated_when_absent(tmp_path, eurosat_root):
    ds = load("eurosat", eurosat_root, tmp_path, split_dir=eurosat_root / "splits")
    assert ds.split_dir == eurosat_root / "splits"
    class_root = eurosat_root / "EuroSAT" / "2750"
    generated = load("eurosat", class_root, tmp_path)  # no splits/ beside the class folders
    assert generated.split_dir is None
    assert generated.split_source.startswith("generated")
    with pytest.raises(DatasetError, match="no split files eurosat-"):
        load("eurosat", eurosat_root, tmp_path, split_dir=tmp_path / "nowhere")


def test_tif_split_names_match_jpg_images_by_stem(tmp_path):
    class_root = make_ucmerced(tmp_path / "data", per_class=4, ext="jpg")
    names = make_split_files(tmp_path / "data" / "splits", "uc_merced", class_root, ext=".tif")
    assert names["train"][0].endswith(".tif")
    ds = load("ucmerced", tmp_path / "data", tmp_path, image_size=16)
    assert all(f.endswith(".jpg") for f in all_files(ds))
    assert [Path(f).stem for f in ds.splits["test"].files] == [Path(n).stem for n in names["test"]]
    written = ds.write_split_files(tmp_path / "run")
    assert written[0].read_text().split("\n") == names["train"]  # names kept as read


def test_generated_split_is_stratified_deterministic_and_seeded(tmp_path):
    make_eurosat(tmp_path / "data", per_class=10)
    a = load("eurosat", tmp_path / "data", tmp_path, seed=0)
    b = load("eurosat", tmp_path / "data", tmp_path, seed=0)
    c = load("eurosat", tmp_path / "data", tmp_path, seed=1)
    assert {s: a.splits[s].files for s in SPLITS} == {s: b.splits[s].files for s in SPLITS}
    assert a.splits["train"].files != c.splits["train"].files
    assert a.split_fingerprint == b.split_fingerprint != c.split_fingerprint
    files = all_files(a)
    assert len(files) == len(set(files)) == 100  # disjoint and covering
    for split, per_class in zip(SPLITS, (6, 2, 2), strict=True):
        counts = torch.bincount(a.splits[split].labels, minlength=10)
        assert counts.tolist() == [per_class] * 10
    d = load("eurosat", tmp_path / "data", tmp_path, fractions=(0.8, 0.1, 0.1))
    assert [len(d.splits[s]) for s in SPLITS] == [80, 10, 10]
    assert d.split_source == "generated: stratified 80/10/10, seed 0"


def test_bad_fractions_raise(tmp_path, eurosat_root):
    with pytest.raises(DatasetError, match="summing to 1"):
        load("eurosat", eurosat_root, tmp_path, fractions=(0.5, 0.2, 0.2))


def test_fingerprint_is_stable_and_follows_the_split(tmp_path, eurosat_root):
    a = load("eurosat", eurosat_root, tmp_path)
    b = load("eurosat", eurosat_root, tmp_path / "other")
    assert a.split_fingerprint == b.split_fingerprint
    assert len(a.split_fingerprint) == 64 and int(a.split_fingerprint, 16) >= 0
    names = {s: [Path(f).name for f in a.splits[s].files] for s in SPLITS}
    names["val"].append(names["train"].pop())  # move one image from train to val
    write_split_files(tmp_path / "moved", "eurosat", names)
    moved = load("eurosat", eurosat_root, tmp_path, split_dir=tmp_path / "moved")
    assert moved.split_fingerprint != a.split_fingerprint


def test_write_split_files_round_trip(tmp_path, eurosat_root):
    ds = load("eurosat", eurosat_root / "EuroSAT", tmp_path, seed=3)
    paths = ds.write_split_files(tmp_path / "run")
    assert [p.name for p in paths] == [f"eurosat-{s}.txt" for s in SPLITS]
    text = paths[0].read_text()
    assert not text.endswith("\n") and "/" not in text
    again = load("eurosat", eurosat_root, tmp_path, split_dir=tmp_path / "run")
    assert again.split_fingerprint == ds.split_fingerprint
    assert again.splits["train"].files == ds.splits["train"].files


def test_official_split_files_are_recognised(tmp_path, eurosat_root, monkeypatch):
    md5s = {s: md5_of(eurosat_root / "splits" / f"eurosat-{s}.txt") for s in SPLITS}
    patched = {
        s: dl.Resource(r.filename, r.url, md5s[s]) for s, r in dl.EUROSAT_SPLIT_FILES.items()
    }
    monkeypatch.setattr(dl, "EUROSAT_SPLIT_FILES", patched)
    ds = load("eurosat", eurosat_root, tmp_path)
    assert ds.split_source.startswith("official split files (MD5 verified) in")


def test_limit_per_class(tmp_path, eurosat_root):
    full = load("eurosat", eurosat_root, tmp_path)
    small = load("eurosat", eurosat_root, tmp_path, limit_per_class=1)
    for split in SPLITS:
        assert torch.bincount(small.splits[split].labels, minlength=10).tolist() == [1] * 10
        assert set(small.splits[split].files) <= set(full.splits[split].files)
    assert small.info()["dropped_by_limit"] == 80 - 30
    with pytest.raises(DatasetError, match="limit_per_class"):
        load("eurosat", eurosat_root, tmp_path, limit_per_class=0)


def test_missing_class_folder_raises(tmp_path):
    make_eurosat(tmp_path / "data", per_class=2, classes=EUROSAT_CLASSES[:-2])
    with pytest.raises(DatasetError) as err:
        load("eurosat", tmp_path / "data", tmp_path)
    msg = str(err.value)
    assert (
        "River" in msg and "SeaLake" in msg and str(tmp_path / "data" / "EuroSAT" / "2750") in msg
    )


def test_empty_class_folder_raises(tmp_path):
    class_root = make_eurosat(tmp_path / "data", per_class=2)
    for f in (class_root / "Forest").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="without images") as err:
        load("eurosat", tmp_path / "data", tmp_path)
    assert str(class_root / "Forest") in str(err.value)


def test_missing_data_raises_with_hints(tmp_path):
    with pytest.raises(DatasetError) as err:
        load("eurosat", tmp_path / "nothing", tmp_path)
    msg = str(err.value)
    assert "does not exist" in msg and "--download" in msg and "--data-dir" in msg
    assert dl.EUROSAT_ARCHIVE.url in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="looked in") as err:
        load("ucmerced", tmp_path / "empty", tmp_path)
    assert str(tmp_path / "empty" / "UCMerced_LandUse" / "Images") in str(err.value)


def test_unknown_dataset_name_raises(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load("mnist", tmp_path, tmp_path)


def test_missing_split_entry_raises(tmp_path, eurosat_root):
    names = {
        s: (eurosat_root / "splits" / f"eurosat-{s}.txt").read_text().split("\n") for s in SPLITS
    }
    names["test"].append("Forest_999.jpg")
    paths = write_split_files(tmp_path / "splits", "eurosat", names)
    with pytest.raises(DatasetError) as err:
        load("eurosat", eurosat_root, tmp_path, split_dir=tmp_path / "splits")
    msg = str(err.value)
    assert "Forest_999.jpg" in msg and str(paths["test"]) in msg and "--split-dir" in msg


def test_incomplete_split_files_raise(tmp_path, eurosat_root):
    folder = tmp_path / "splits"
    folder.mkdir()
    shutil.copy(eurosat_root / "splits" / "eurosat-train.txt", folder)
    with pytest.raises(DatasetError, match="eurosat-val.txt"):
        load("eurosat", eurosat_root, tmp_path, split_dir=folder)


def test_image_in_two_splits_raises(tmp_path, eurosat_root):
    names = {
        s: (eurosat_root / "splits" / f"eurosat-{s}.txt").read_text().split("\n") for s in SPLITS
    }
    names["test"].append(names["train"][0])
    write_split_files(tmp_path / "splits", "eurosat", names)
    with pytest.raises(DatasetError, match="more than once"):
        load("eurosat", eurosat_root, tmp_path, split_dir=tmp_path / "splits")


def test_corrupt_image_raises_or_is_skipped(tmp_path):
    class_root = make_eurosat(tmp_path / "data", per_class=5)
    bad = truncate_file(class_root / "Pasture" / "Pasture_3.jpg")
    (class_root / "River" / "River_2.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError) as err:
        load("eurosat", tmp_path / "data", tmp_path)
    msg = str(err.value)
    assert str(bad) in msg and "River_2.jpg" in msg and "--skip-bad-files" in msg
    ds = load("eurosat", tmp_path / "data", tmp_path, skip_bad_files=True)
    assert ds.skipped == ["Pasture/Pasture_3.jpg", "River/River_2.jpg"]
    assert len(all_files(ds)) == 48 and "Pasture/Pasture_3.jpg" not in all_files(ds)
    assert ds.info()["skipped_bad_files"] == 2
    with pytest.raises(DatasetError, match="Pasture_3.jpg"):  # the cache remembers bad files
        load("eurosat", tmp_path / "data", tmp_path)


def test_truncated_image_fails_even_if_pil_is_told_to_accept_it(tmp_path, monkeypatch):
    class_root = make_eurosat(tmp_path / "data", per_class=3)
    truncate_file(class_root / "Highway" / "Highway_2.jpg", keep=0.6)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DatasetError, match="Highway_2.jpg"):
        load("eurosat", tmp_path / "data", tmp_path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_ucmerced_odd_sizes_are_resized(tmp_path, ucmerced_root):
    ds = load("ucmerced", ucmerced_root, tmp_path)
    assert ds.image_size == (256, 256)
    assert all(ds.splits[s].images.shape[1:] == (3, 256, 256) for s in SPLITS)
    sizes = ds.info()["image_sizes_on_disk"]
    for w, h in UCMERCED_ODD_SIZES.values():
        assert sizes[f"{w}x{h}"] == 1
    assert sizes["256x256"] == 21 * 5 - len(UCMERCED_ODD_SIZES)
    rel = "buildings/buildings00.tif"
    split = next(s for s in SPLITS if rel in ds.splits[s].files)
    img = ds.splits[split].images[ds.splits[split].files.index(rel)].float()
    native = np.asarray(Image.open(ds.root / rel), dtype=np.float32).transpose(2, 0, 1)
    assert abs(img.mean().item() - native.mean()) < 2  # resized, not cropped or padded


def test_image_size_override(tmp_path, eurosat_root):
    ds = load("eurosat", eurosat_root, tmp_path, image_size=(32, 48))
    assert ds.image_size == (32, 48)
    assert ds.splits["train"].images.shape[2:] == (32, 48)
    assert load("eurosat", eurosat_root, tmp_path, image_size="16").image_size == (16, 16)
    with pytest.raises(DatasetError, match="image_size"):
        load("eurosat", eurosat_root, tmp_path, image_size=(0, 5))


def test_imagefolder(tmp_path, imagefolder_root):
    ds = load("imagefolder", imagefolder_root, tmp_path)
    assert ds.classes == ["cloud", "field", "water"] and ds.image_size == (32, 32)
    assert ds.split_source.startswith("generated")
    mixed = make_imagefolder(tmp_path / "mixed", per_class=3, size=[(32, 32), (40, 30)])
    with pytest.raises(DatasetError, match="different sizes.*--image-size"):
        load("imagefolder", mixed, tmp_path)
    ds = load("imagefolder", mixed, tmp_path, image_size=24)
    assert ds.splits["train"].images.shape[1:] == (3, 24, 24)


def test_imagefolder_ignores_a_splits_folder(tmp_path):
    root = make_imagefolder(tmp_path / "imgs", per_class=3)
    (root / "splits").mkdir()
    (root / "splits" / "notes.txt").write_text("not a class")
    ds = load("imagefolder", root, tmp_path)
    assert ds.classes == ["cloud", "field", "water"]
    assert ds.info()["ignored_folders"] == []


def test_imagefolder_with_split_files(tmp_path, imagefolder_root):
    names = {
        "train": ["cloud/img_0.png", "field/img_0.png", "water/img_0.png"],
        "val": ["cloud/img_1.png", "field/img_1.png", "water/img_1.png"],
        "test": ["cloud/img_2.png", "field/img_2.png", "water/img_2.png"],
    }
    write_split_files(tmp_path / "splits", "mine", names)
    ds = load("imagefolder", imagefolder_root, tmp_path, split_dir=tmp_path / "splits")
    assert ds.splits["val"].files == names["val"]
    assert ds.split_source == f"split files in {tmp_path / 'splits'}"
    assert ds.info()["unused_on_disk"] == 18 - 9
    names["val"][0] = "img_1.png"  # the same basename exists in every class
    write_split_files(tmp_path / "splits", "mine", names)
    with pytest.raises(DatasetError, match="matches several images"):
        load("imagefolder", imagefolder_root, tmp_path, split_dir=tmp_path / "splits")


def test_decode_cache_is_reused(tmp_path, eurosat_root, monkeypatch):
    first = load("eurosat", eurosat_root, tmp_path)
    assert first.info()["decoded_from_cache"] is False
    assert first.cache_path.is_file() and first.cache_path.parent == tmp_path / "cache"

    def no_decoding(*args, **kwargs):
        raise AssertionError("PIL was called although the cache should be used")

    monkeypatch.setattr(Image, "open", no_decoding)
    second = load("eurosat", eurosat_root, tmp_path)
    assert second.info()["decoded_from_cache"] is True
    for split in SPLITS:
        assert torch.equal(first.splits[split].images, second.splits[split].images)


def test_decode_cache_invalidated_by_changed_file(tmp_path):
    class_root = make_eurosat(tmp_path / "data", per_class=3)
    first = load("eurosat", tmp_path / "data", tmp_path)
    target = class_root / "Forest" / "Forest_1.jpg"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(target)
    os.utime(target, ns=(1, 1))
    second = load("eurosat", tmp_path / "data", tmp_path)
    assert second.info()["decoded_from_cache"] is False
    assert second.cache_path != first.cache_path


def test_default_cache_dir_from_environment(tmp_path, eurosat_root, monkeypatch):
    monkeypatch.setenv("SATCOMPRESS_CACHE", str(tmp_path / "envcache"))
    ds = load_dataset("eurosat", eurosat_root, limit_per_class=1, progress=False)
    assert ds.cache_path.parent == tmp_path / "envcache"


def test_channel_stats_match_numpy(tmp_path, eurosat_root):
    ds = load("eurosat", eurosat_root, tmp_path)
    mean, std = ds.channel_stats()
    x = ds.splits["train"].images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3)), atol=1e-9)
    assert np.allclose(std, x.std(axis=(0, 2, 3)), atol=1e-9)
    assert all(isinstance(v, float) for v in mean + std) and len(mean) == 3


def test_info_reports_counts_and_provenance(tmp_path, eurosat_root):
    info = load("eurosat", eurosat_root, tmp_path).info()
    assert info["images_on_disk"] == 80 and info["unused_on_disk"] == 0
    assert info["per_class_on_disk"]["Forest"] == 8
    assert info["counts"] == {"train": 40, "val": 20, "test": 20}
    assert info["per_split_per_class"]["val"]["SeaLake"] == 2
    assert info["image_sizes_on_disk"] == {"64x64": 80}
    assert str(eurosat_root / "EuroSAT" / "2750") in info["looked_in"]
    assert json.loads(json.dumps(info)) == info  # plain JSON for `satcompress data info`


def test_datamodule_batches(tmp_path, eurosat_root):
    ds = load("eurosat", eurosat_root, tmp_path)
    dm = SceneDataModule(ds, batch_size=16, eval_batch_size=32, seed=0)
    assert dm.num_classes == 10 and dm.image_size == (64, 64)
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [16, 16, 8]  # drop_last=False
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 64, 64)
    assert labels.dtype == torch.int64
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == sorted(ds.splits["train"].labels.tolist())
    again = [b[1] for b in SceneDataModule(ds, batch_size=16, seed=0).train_dataloader()]
    other = [b[1] for b in SceneDataModule(ds, batch_size=16, seed=1).train_dataloader()]
    assert torch.equal(torch.cat(again), seen)
    assert not torch.equal(torch.cat(other), seen)
    val = list(dm.val_dataloader())
    assert len(val) == 1 and torch.equal(val[0][0], ds.splits["val"].images)
    test_images, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(test_images, ds.splits["test"].images)


def test_split_dataset_fetches_whole_batches(tmp_path, eurosat_root):
    from satcompress.data.datamodule import _SplitDataset

    ds = load("eurosat", eurosat_root, tmp_path)
    sd = _SplitDataset(ds.splits["train"])
    images, labels = sd.__getitems__([3, 0, 5])
    assert torch.equal(images[1], ds.splits["train"].images[0])
    assert torch.equal(labels, ds.splits["train"].labels[[3, 0, 5]])
    image, label = sd[2]
    assert image.shape == (3, 64, 64) and label == ds.splits["train"].labels[2]
    assert len(sd) == 40


@pytest.mark.slow
def test_datamodule_with_worker_processes(tmp_path, eurosat_root):
    ds = load("eurosat", eurosat_root, tmp_path)
    serial = SceneDataModule(ds, batch_size=8, seed=4)
    workers = SceneDataModule(ds, batch_size=8, seed=4, num_workers=2)
    a = [y for _, y in serial.train_dataloader()]
    b = [y for _, y in workers.train_dataloader()]
    assert torch.equal(torch.cat(a), torch.cat(b))
