"""The device side: ``satcompress.runtime`` reads a ``.satc`` and predicts without torch,
exactly as ``satcompress eval --artifact`` scores it; scenes are tiled by documented rules."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, TiffImagePlugin

from satcompress.cli import main
from satcompress.compress.quantize import PTQConfig
from satcompress.pipeline import run
from satcompress.runtime import Runtime
from satcompress.runtime.cli import main as runtime_main
from satcompress.runtime.images import ImageError, fit_image
from satcompress.runtime.tiles import (
    Scene,
    SceneError,
    Tile,
    geotransform,
    predict_scene,
    tile_grid,
    write_tiles,
)
from satcompress.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
#: Modules a device does not have: importing any of them raises ImportError in the subprocess.
HEAVY = ("torch", "torchvision", "lightning", "timm", "brevitas", "open_clip", "tqdm", "yaml")
NO_TORCH = (
    "import runpy, sys\n"
    f"for name in {HEAVY!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv[0] = 'satcompress.runtime'\n"
    "try:\n"
    "    runpy.run_module('satcompress.runtime', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    loaded = [m for m in sys.modules if m.split('.')[0] in "
    f"{HEAVY!r} and sys.modules[m] is not None]\n"
    "    assert not loaded, loaded\n"
)


@pytest.fixture(scope="module")
def runs(eurosat_root, tmp_path_factory):
    """A test_cnn trained on the fake EuroSAT, and its PTQ int8 run (model.satc).

    Full 8-bit weights (no ``reduce_range``): the ones the saturation-safe rewrite is for.
    """
    folder = tmp_path_factory.mktemp("runtime-runs")
    config = TrainConfig(
        model="test_cnn", dataset="eurosat", data_dir=str(eurosat_root), epochs=4,
        batch_size=16, lr=0.05, ema_decay=None,
    )  # fmt: skip
    trained = run(config, None, None, folder / "t", latency=None)
    run(
        PTQConfig(calibration_images=16, reduce_range=False),
        trained,
        None,
        folder / "q",
        latency=None,
    )
    return folder


@pytest.fixture(scope="module")
def int8(runs):
    return runs / "q" / "model.satc"


@pytest.fixture(scope="module")
def model(int8):
    return Runtime(int8, threads=1)


def _test_split(eurosat_root):
    from satcompress.data import load_dataset

    return load_dataset("eurosat", eurosat_root, progress=False)


def _no_torch(*args, check=True):
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_predict_without_torch_matches_satcompress_eval(int8, eurosat_root, tmp_path):
    dataset = _test_split(eurosat_root)
    test = dataset.splits["test"]
    files = [dataset.root / f for f in test.files]
    done = _no_torch("predict", int8, *files, "--json", "--threads", "1")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(f) for f in files]
    predicted = np.array([dataset.classes.index(r["class"]) for r in rows])
    for r in rows:
        assert r["probability"] == pytest.approx(max(r["probabilities"].values()), abs=1e-6)
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)

    # the same predictions as the evaluation's own ONNX Runtime pass over the decoded split
    from satcompress.artifact.format import load_artifact
    from satcompress.evaluate.evaluate import predict_onnx

    onnx_path = load_artifact(int8).save_onnx(tmp_path / "graph.onnx")
    expected = predict_onnx(onnx_path, dataset, "test", threads=1, progress=False)
    np.testing.assert_array_equal(predicted, expected)
    assert len(set(predicted.tolist())) > 1, "a trained fixture model, not a constant one"

    # and the record of `satcompress eval --artifact` agrees: accuracy and confusion matrix
    assert main(["eval", "--artifact", str(int8), "--no-latency", "--run-dir",
                 str(tmp_path / "eval")]) == 0  # fmt: skip
    record = json.loads((tmp_path / "eval" / "record.json").read_text())
    labels = test.labels.numpy()
    assert record["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    confusion = np.zeros((len(dataset.classes),) * 2, dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    assert record["confusion_matrix"] == confusion.tolist()


def test_runtime_takes_paths_pil_images_and_arrays_alike(model, eurosat_root):
    files = sorted((eurosat_root / "EuroSAT" / "2750").rglob("*.jpg"))[::9]
    images = [Image.open(f) for f in files]
    arrays = [np.asarray(img.convert("RGB")) for img in images]
    by_path, by_image, by_array = (model.predict(x, batch_size=3) for x in (files, images, arrays))
    for a, b, c in zip(by_path, by_image, by_array, strict=True):
        assert a.label == b.label == c.label
        np.testing.assert_array_equal(a.probabilities, c.probabilities)
    label, probabilities = by_path[0]  # unpacks as (class name, probabilities)
    assert label in model.classes and probabilities.shape == (len(model.classes),)
    assert model.image_size == (64, 64) and len(model.classes) == 10
    batch = np.stack(arrays)
    np.testing.assert_array_equal(
        model.predict_batch(batch), model.predict_batch(batch.transpose(0, 3, 1, 2))
    )
    with pytest.raises(ValueError, match="uint8"):
        model.predict_batch(batch.astype(np.float32))
    with pytest.raises(ValueError, match="64x64"):
        model.predict_batch(batch[:, :32])


def test_images_of_another_size_are_resized_as_training_decodes_them(model, tmp_path):
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    big.save(tmp_path / "big.png")
    resized = np.asarray(big.resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(fit_image(big, (64, 64)), resized)
    a, b = model.predict([tmp_path / "big.png", resized])
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    grey = np.asarray(big.convert("L"))
    assert model.predict([grey])[0].label in model.classes


def test_the_device_path_serialises_the_graph_without_onnx(int8, model, eurosat_root):
    import onnx

    from satcompress.runtime.satc import load_artifact

    artifact = load_artifact(int8)
    fast = onnx.load_from_string(artifact.onnx_bytes())
    assert fast.SerializeToString() == artifact.onnx_model().SerializeToString()
    # the rewrite for CPUs without VNNI goes through onnx: the same predictions
    exact = Runtime(int8, threads=1, int8_kernels="exact")
    assert exact.session.satcompress_uint8_weights > 0
    images = np.stack(
        [np.asarray(Image.open(f)) for f in sorted((eurosat_root / "EuroSAT").rglob("*.jpg"))]
    )
    np.testing.assert_allclose(exact.logits(images), model.logits(images), atol=1e-5, rtol=1e-5)
    # and a device whose CPU needs no rewrite never imports onnx (a second, at a cold start)
    code = (
        "import sys, numpy\nfrom satcompress.runtime import Runtime\n"
        "from satcompress.runtime.saturation import resolve_policy\n"
        f"Runtime({str(int8)!r}).predict([numpy.zeros((64, 64, 3), 'uint8')])\n"
        "print('onnx' in sys.modules, resolve_policy('auto'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    imported, rewrites = done.stdout.split()
    assert imported == rewrites


def test_a_corrupt_image_is_named(model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageError, match="bad.jpg"):
        model.predict([bad])


def test_cli_folder_json_and_bad_files(int8, eurosat_root, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted((eurosat_root / "EuroSAT" / "2750" / "Forest").glob("*.jpg"))[:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    assert runtime_main(["predict", str(int8), str(folder), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 3 for line in lines)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG broken")
    assert runtime_main(["predict", str(int8), str(folder)]) == 2
    assert "zz_broken.png" in capsys.readouterr().err
    assert runtime_main(["predict", str(int8), str(folder), "--skip-bad-files"]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3 and "zz_broken.png" in err
    assert runtime_main(["predict", str(tmp_path / "none.satc"), str(folder)]) == 2
    assert "no artifact file" in capsys.readouterr().err
    not_satc = tmp_path / "x.satc"
    not_satc.write_bytes(b"hello")
    assert runtime_main(["predict", str(not_satc), str(folder)]) == 2
    assert "not a satcompress artifact" in capsys.readouterr().err


def test_exported_onnx_predicts_what_the_satc_session_predicts(int8, model, eurosat_root, tmp_path):
    files = sorted((eurosat_root / "EuroSAT" / "2750").rglob("*.jpg"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    expected = model.logits(images)
    for flag in ([], ["--saturation-safe"]):
        out = tmp_path / f"plain{len(flag)}.onnx"
        assert main(["export", "--artifact", str(int8), "--onnx-out", str(out), *flag]) == 0
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        logits = session.run(None, {"image": np.ascontiguousarray(images.transpose(0, 3, 1, 2))})
        np.testing.assert_array_equal(logits[0].argmax(1), expected.argmax(1))
        np.testing.assert_allclose(logits[0], expected, rtol=1e-5, atol=1e-5)
    import onnx

    plain = onnx.load(str(tmp_path / "plain0.onnx"))
    safe = onnx.load(str(tmp_path / "plain1.onnx"))
    dtype = {t.name: t.data_type for t in plain.graph.initializer}
    u8, i8 = onnx.TensorProto.UINT8, onnx.TensorProto.INT8
    rewritten = [
        t.name for t in safe.graph.initializer if t.data_type == u8 and dtype.get(t.name) == i8
    ]
    assert rewritten, "the saturation-safe graph stores 8-bit weights as uint8"
    # the same through the torch-free command
    _no_torch("export-onnx", int8, tmp_path / "dev.onnx")
    assert (tmp_path / "dev.onnx").read_bytes() == (tmp_path / "plain0.onnx").read_bytes()


# ---------------------------------------------------------------------------------- tiling


def test_tile_grid_rules():
    drop = tile_grid(150, 100, 64)
    assert [(t.x, t.y) for t in drop] == [(0, 0), (64, 0)]
    pad = tile_grid(150, 100, 64, edge="pad")
    assert [(t.row, t.col, t.x, t.y) for t in pad][-1] == (1, 2, 128, 64)
    assert len(pad) == 6 and (pad[-1].width, pad[-1].height) == (22, 36)
    overlap = tile_grid(128, 64, 64, 32)
    assert [t.x for t in overlap] == [0, 32, 64]
    assert [t.x for t in tile_grid(128, 64, 64, 32, edge="pad")] == [0, 32, 64]
    with pytest.raises(SceneError, match="smaller than one 64x64 tile.*--edge pad"):
        tile_grid(50, 40, 64)
    assert tile_grid(50, 40, 64, edge="pad") == [Tile(0, 0, 0, 0, 50, 40)]
    with pytest.raises(ValueError, match="edge"):
        tile_grid(100, 100, 64, edge="wrap")


def _mosaic(eurosat_root, cols=3, rows=2, border=(20, 10)):
    """A scene of real fixture images in a grid, plus a border narrower than a tile."""
    files = sorted((eurosat_root / "EuroSAT" / "2750").rglob("*.jpg"))[:: 80 // (cols * rows)]
    tiles = [np.asarray(Image.open(f).convert("RGB")) for f in files[: cols * rows]]
    scene = np.full((rows * 64 + border[1], cols * 64 + border[0], 3), 90, dtype=np.uint8)
    for i, pixels in enumerate(tiles):
        r, c = divmod(i, cols)
        scene[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = pixels
    return scene, tiles


@pytest.mark.parametrize("fmt", ["png", "tif", "tif-lzw", "tif-strips"])
def test_scene_tiles_match_the_images_they_were_cut_from(model, eurosat_root, tmp_path, fmt):
    scene, tiles = _mosaic(eurosat_root)
    path = tmp_path / f"scene.{fmt.split('-')[0]}"
    if fmt == "tif-strips":  # several strips, as GDAL writes
        TiffImagePlugin.WRITE_LIBTIFF = True
        try:
            Image.fromarray(scene).save(path, compression="raw", strip_size=scene.shape[1] * 3 * 5)
        finally:
            TiffImagePlugin.WRITE_LIBTIFF = False
    else:
        Image.fromarray(scene).save(path, **({"compression": "tiff_lzw"} if "lzw" in fmt else {}))
    opened = Scene(path)
    assert opened.streamed == (fmt in ("tif", "tif-strips"))
    for y0 in (0, 37, 100):
        np.testing.assert_array_equal(opened.band(y0, y0 + 64), scene[y0 : y0 + 64])
    results = list(predict_scene(model, opened, 64, batch_size=4))
    assert [t for t, _ in results] == tile_grid(scene.shape[1], scene.shape[0], 64)
    expected = model.predict(tiles)
    for (_, got), want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.probabilities, want.probabilities)
    if opened.streamed:
        assert opened._pixels is None, "a stripped TIFF is never decoded whole"

    padded = list(predict_scene(model, path, 64, edge="pad", batch_size=5))
    assert len(padded) == 4 * 3
    edge_tile, edge_prediction = padded[3]  # row 0, col 3: 20 columns of scene, then zeros
    assert (edge_tile.x, edge_tile.width, edge_tile.height) == (192, 20, 64)
    zero_padded = np.zeros((64, 64, 3), np.uint8)
    zero_padded[:, :20] = scene[:64, 192:]
    np.testing.assert_array_equal(
        edge_prediction.probabilities, model.predict([zero_padded])[0].probabilities
    )


def test_a_scene_smaller_than_a_tile_is_an_error_or_one_padded_tile(model, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(small)
    with pytest.raises(SceneError, match="smaller than one 64x64 tile"):
        list(predict_scene(model, small, 64))
    ((tile, prediction),) = predict_scene(model, small, 64, edge="pad")
    assert tile == Tile(0, 0, 0, 0, 50, 40)
    padded = np.zeros((64, 64, 3), np.uint8)
    padded[:40, :50] = 120
    np.testing.assert_array_equal(
        prediction.probabilities, model.predict([padded])[0].probabilities
    )


def test_tiles_of_another_size_are_resized_by_the_training_rule(model, tmp_path):
    rng = np.random.default_rng(2)
    scene = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)
    Image.fromarray(scene).save(tmp_path / "s.png")
    results = list(predict_scene(model, tmp_path / "s.png", 128, 64))
    assert [(t.x, t.y) for t, _ in results] == [(0, 0), (64, 0), (128, 0)]
    crop = Image.fromarray(scene[:, 64:192]).resize((64, 64), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(
        results[1][1].probabilities, model.predict([np.asarray(crop)])[0].probabilities
    )


def test_corrupt_and_truncated_scenes_raise_errors_naming_the_file(model, tmp_path):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + b"\x00" * 40)
    with pytest.raises(SceneError, match="garbage.tif"):
        Scene(garbage)
    scene = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(scene).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneError, match="truncated.png"):
        list(predict_scene(model, truncated, 64))
    with pytest.raises(FileNotFoundError):
        Scene(tmp_path / "missing.tif")


def test_cli_tiles_to_csv_and_geojson_with_a_world_file(int8, eurosat_root, tmp_path, capsys):
    scene, _ = _mosaic(eurosat_root)
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    args = ["predict", str(int8), str(path), "--tile", "64", "--threads", "1", "--quiet"]
    assert runtime_main([*args, "--out", str(tmp_path / "tiles.csv")]) == 0
    assert "6 tiles" in capsys.readouterr().out
    lines = (tmp_path / "tiles.csv").read_text().splitlines()
    assert lines[0] == "row,col,x,y,class,prob" and len(lines) == 7
    assert lines[-1].startswith("1,2,128,64,")

    assert runtime_main([*args, "--out", str(tmp_path / "px.geojson"), "--edge", "pad"]) == 0
    pixels = json.loads((tmp_path / "px.geojson").read_text())
    assert len(pixels["features"]) == 12 and "crs" not in pixels
    ring = pixels["features"][-1]["geometry"]["coordinates"][0]
    assert ring[0] == [192, 128] and ring[2] == [212, 138]  # the padded corner tile's scene part

    # a world file: 10 m pixels, top-left pixel centre at (500005, 4000095)
    path.with_suffix(".pgw").write_text("10\n0\n0\n-10\n500005\n4000095\n")
    assert runtime_main([*args, "--out", str(tmp_path / "geo.geojson")]) == 0
    assert "in map coordinates" in capsys.readouterr().out
    geo = json.loads((tmp_path / "geo.geojson").read_text())
    first = geo["features"][0]["geometry"]["coordinates"][0]
    assert first[0] == [500000.0, 4000100.0] and first[2] == [500640.0, 3999460.0]
    classes = [f["properties"]["class"] for f in geo["features"]]
    assert classes == [line.split(",")[4] for line in lines[1:]]

    # without --out: one line per tile
    assert runtime_main(args) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6
    assert runtime_main(["predict", str(int8), str(path), str(path), "--tile", "64"]) == 2
    assert "one scene" in capsys.readouterr().err


def test_geotiff_tags_give_map_coordinates_and_crs(tmp_path):
    from PIL.TiffImagePlugin import ImageFileDirectory_v2

    tags = ImageFileDirectory_v2()
    tags[33550] = (30.0, 30.0, 0.0)
    tags.tagtype[33550] = 12  # DOUBLE
    tags[33922] = (0.0, 0.0, 0.0, 300000.0, 5000000.0, 0.0)
    tags.tagtype[33922] = 12
    tags[34735] = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32633)  # projected, EPSG:32633
    tags.tagtype[34735] = 3  # SHORT
    path = tmp_path / "geo.tif"
    Image.new("RGB", (70, 70)).save(path, tiffinfo=tags)
    transform, crs = geotransform(path)
    assert crs == "EPSG:32633"
    assert transform == (30.0, 0.0, 300000.0, 0.0, -30.0, 5000000.0)
    assert geotransform(tmp_path / "missing.png") == (None, None)


def test_write_tiles_rejects_other_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv or \.geojson"):
        write_tiles(tmp_path / "x.txt", iter([]))
    assert not list(tmp_path.iterdir()), "no temporary file left behind"


# ---------------------------------------------------------------------------- distribution


def test_the_runtime_wheel_alone_predicts(int8, eurosat_root, tmp_path):
    """``runtime/`` builds a wheel of the torch-free modules only, and they suffice."""
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT / "runtime"), "--no-deps",
         "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("satcompress_runtime-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    modules = {n for n in names if n.endswith(".py")}
    assert "satcompress/runtime/predict.py" in modules and "satcompress/card.py" in modules
    assert not any(n.startswith(("satcompress/models", "satcompress/data")) for n in modules)
    assert "satcompress/checkpoint.py" not in modules and "satcompress/__main__.py" not in modules
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist")]  # fmt: skip
    assert sorted(r.split()[1].split(">")[0] for r in requires if "extra ==" not in r) == [
        "numpy", "onnx", "onnxruntime", "pillow"
    ]  # fmt: skip
    # checking signatures is optional (pip install ./runtime[verify])
    assert [r for r in requires if "extra ==" in r] == [
        'Requires-Dist: cryptography>=42; extra == "verify"'
    ]

    # only the wheel's files and the third-party packages: no site hooks, no editable src/
    # (where the four dependencies live: in a venv with system packages, not its purelib)
    import importlib

    third_party = dict.fromkeys(
        str(Path(importlib.import_module(name).__file__).parents[1])
        for name in ("numpy", "onnx", "onnxruntime", "PIL")
    )
    env = {"PYTHONPATH": ":".join([str(tmp_path / "site"), *third_party])}
    image = next((eurosat_root / "EuroSAT" / "2750").rglob("*.jpg"))
    check = f"import satcompress\nassert satcompress.__file__.startswith({str(tmp_path)!r})\n"
    code = NO_TORCH.replace("import runpy, sys\n", "import runpy, sys\n" + check)
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, "predict", str(int8), str(image)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"{image}\t")
