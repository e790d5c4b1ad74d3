"""Shared pytest fixtures: tiny fake datasets in the real layouts, and the real data folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_data import make_eurosat, make_imagefolder, make_split_files, make_ucmerced

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the default decode cache ($SATCOMPRESS_CACHE) into the session's temp folder."""
    cache = tmp_path_factory.mktemp("satcompress-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SATCOMPRESS_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def eurosat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data folder with ``EuroSAT/2750/<Class>/*.jpg`` (8 per class) and ``splits/eurosat-*.txt``.

    Shared by the session: do not modify; copy it (or make your own) to break things.
    """
    data = tmp_path_factory.mktemp("eurosat-data")
    class_root = make_eurosat(data, per_class=8, seed=0)
    make_split_files(data / "splits", "eurosat", class_root, seed=0)
    return data


@pytest.fixture(scope="module")
def dataset(eurosat_root: Path):  # noqa: ANN201 (imports torch only when a test needs it)
    """The fixture EuroSAT loaded (each test module gets its own copy)."""
    from satcompress.data import load_dataset

    return load_dataset("eurosat", eurosat_root, progress=False)


@pytest.fixture(scope="session")
def ucmerced_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data folder with ``UCMerced_LandUse/Images/<class>/*.tif`` (5 per class, some odd sizes)
    and ``splits/uc_merced-*.txt``. Do not modify.
    """
    data = tmp_path_factory.mktemp("ucmerced-data")
    class_root = make_ucmerced(data, per_class=5, seed=0)
    make_split_files(data / "splits", "uc_merced", class_root, seed=0)
    return data


@pytest.fixture(scope="session")
def imagefolder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/{cloud,field,water}/img_<n>.png``, 6 per class, 32x32. Do not modify."""
    return make_imagefolder(tmp_path_factory.mktemp("imagefolder"), per_class=6)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets in ``../shared/data`` beside the repository (skipped if absent)."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained_cnn(eurosat_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN trained one epoch on the fixture EuroSAT: the source of the BAIC tests."""
    from satcompress.pipeline import run
    from satcompress.train import TrainConfig

    run_dir = tmp_path_factory.mktemp("baic-cnn") / "t"
    config = TrainConfig(
        model="test_cnn", dataset="eurosat", data_dir=str(eurosat_root), epochs=1,
        batch_size=16, lr=0.05, ema_decay=None,
    )  # fmt: skip
    run(config, None, None, run_dir, latency=None)
    return run_dir
