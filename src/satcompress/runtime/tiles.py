"""Classify a large scene tile by tile, streaming: a per-tile CSV or GeoJSON of labels.

Tiling rule (:func:`tile_grid`): tiles of ``tile`` x ``tile`` pixels start at ``x, y = 0,
stride, 2 * stride, ...``; tile ``(row, col)`` covers ``[x, x + tile) x [y, y + tile)``.

* ``edge="drop"`` (default): only whole tiles; the right and bottom strips narrower than a
  tile are left unlabelled (at most ``tile - 1`` pixels, or less with a smaller stride). A
  scene smaller than one tile is an error (:class:`SceneError`) that says to use ``pad``.
* ``edge="pad"``: the last tile of each row and column overlaps the border, and the part
  outside the scene is filled with zeros (the usual no-data value of a scene), so every pixel
  is labelled; a scene smaller than a tile is one padded tile. A padded tile's ``width`` and
  ``height`` say how much of it is scene.

Each tile is resized to the model's input size by the training rule
(:func:`satcompress.runtime.images.fit_image`) when ``tile`` differs from it.

Memory: tiles are cut from one band of ``tile`` rows at a time and classified in batches, so
besides the model only one band and one batch of tiles are held, *for uncompressed stripped
or tiled TIFF files* (what GDAL writes by default): their bands are read straight from the
file's strips. Pillow cannot decode part of a JPEG, PNG or compressed TIFF, so those scenes
are decoded whole once (width x height x 3 bytes kept, twice that while decoding) and
then tiled the same way. Measured on a 4096 x 4096 scene with the 2-bit ResNet-18: peak
resident memory 112 MB from an uncompressed TIFF, 257 MB from the same pixels as PNG.

Georeferencing (GeoJSON only): with a GeoTIFF (ModelTiepoint + ModelPixelScale, or
ModelTransformation tags) or a world file beside the image (``.tfw``, ``.jgw``, ``.pgw``,
``.wld``...), polygons are in the file's coordinate reference system (named in a ``crs``
member when the GeoTIFF gives an EPSG code; no reprojection, no GDAL); otherwise they are in
pixel coordinates (x right, y down, origin at the top-left corner).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from satcompress.runtime.images import fit_image, strict_decoding
from satcompress.runtime.predict import Prediction, Runtime
from satcompress.utils.io import atomic_open

EDGE_RULES = ("drop", "pad")

__all__ = [
    "EDGE_RULES",
    "Progress",
    "Scene",
    "SceneError",
    "Tile",
    "geotransform",
    "predict_scene",
    "tile_grid",
    "write_tiles",
]

# BitsPerSample, PlanarConfiguration, and the GeoTIFF tags
_BITS, _PLANAR = 258, 284
_PIXEL_SCALE, _TIEPOINT, _TRANSFORM, _GEOKEYS = 33550, 33922, 34264, 34735
_WORLD_SUFFIXES = {
    ".tif": (".tfw", ".tifw", ".wld"),
    ".tiff": (".tfw", ".tiffw", ".wld"),
    ".jpg": (".jgw", ".jpgw", ".wld"),
    ".jpeg": (".jgw", ".jpegw", ".wld"),
    ".png": (".pgw", ".pngw", ".wld"),
}


class SceneError(ValueError):
    """A scene cannot be read or tiled; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile: grid position, top-left pixel, and how much of it lies in the scene."""

    row: int
    col: int
    x: int
    y: int
    width: int
    height: int


def tile_grid(
    width: int, height: int, tile: int, stride: int | None = None, edge: str = "drop"
) -> list[Tile]:
    """The tiles of a ``width`` x ``height`` scene, row by row (see the module docstring).

    Raises:
        ValueError: If ``tile`` or ``stride`` is not positive or ``edge`` is unknown.
        SceneError: With ``edge="drop"``, if the scene is smaller than one tile.
    """
    stride = stride or tile
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be positive, got {tile} and {stride}")
    if edge not in EDGE_RULES:
        raise ValueError(f"edge must be one of {EDGE_RULES}, got {edge!r}")
    xs, ys = _starts(width, tile, stride, edge), _starts(height, tile, stride, edge)
    if not xs or not ys:
        raise SceneError(
            f"the scene ({width}x{height}) is smaller than one {tile}x{tile} tile: use a "
            "smaller --tile, or --edge pad to classify it as one zero-padded tile"
        )
    return [
        Tile(r, c, x, y, min(tile, width - x), min(tile, height - y))
        for r, y in enumerate(ys)
        for c, x in enumerate(xs)
    ]


def _starts(length: int, tile: int, stride: int, edge: str) -> list[int]:
    if edge == "drop":
        return list(range(0, length - tile + 1, stride))
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(starts[-1] + stride)
    return starts


class Scene:
    """A scene image opened lazily; :meth:`band` returns rows of it as RGB uint8.

    Raises:
        FileNotFoundError: If the file does not exist.
        SceneError: If it is not an image Pillow can read (the message names it).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no scene file at {self.path}")
        with _scene_errors(self.path), Image.open(self.path) as image:
            self.width, self.height = image.size
            self.format = image.format
            self.streamed = _raw_strips(image) is not None
        self._pixels: np.ndarray | None = None

    def band(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` (clipped to the scene) as ``(rows, width, 3)`` uint8 RGB."""
        y0, y1 = max(0, y0), min(self.height, y1)
        if self.streamed:
            with _scene_errors(self.path), Image.open(self.path) as image:
                return _read_raw_band(image, y0, y1)
        if self._pixels is None:
            with _scene_errors(self.path), Image.open(self.path) as image:
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                self._pixels = np.asarray(rgb)
        return self._pixels[y0:y1]


@contextlib.contextmanager
def _scene_errors(path: Path) -> Iterator[None]:
    """Turn a decoder failure into a :class:`SceneError` naming the file; strict decoding.

    Pillow's decompression-bomb limit (about 179 megapixels) is lifted meanwhile: a scene is
    large on purpose.
    """
    failures = (OSError, ValueError, UnidentifiedImageError, SyntaxError, struct.error)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with strict_decoding():
            yield
    except (FileNotFoundError, SceneError):
        raise
    except failures as err:
        raise SceneError(f"{path}: cannot read this scene ({type(err).__name__}: {err})") from err
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _raw_strips(image: Image.Image) -> list[Any] | None:
    """The uncompressed, top-down, chunky strips or tiles of a TIFF, else None."""
    if image.format != "TIFF" or getattr(image, "use_load_libtiff", True) or not image.tile:
        return None
    if image.tag_v2.get(_PLANAR, 1) != 1 or image.mode not in ("RGB", "L", "RGBA"):
        return None
    if any(t[0] != "raw" or len(t[3]) < 3 or t[3][2] != 1 for t in image.tile):
        return None
    if any(b != 8 for b in _bits(image)):
        return None
    return list(image.tile)


def _bits(image: Image.Image) -> tuple[int, ...]:
    bits = image.tag_v2.get(_BITS, (8,))
    return (bits,) if isinstance(bits, int) else tuple(bits)


def _read_raw_band(image: Image.Image, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of an uncompressed TIFF, reading only the strips that hold them.

    Pillow has no API for this: the image is re-pointed at the byte ranges of those rows
    (each strip or tile row is contiguous, ``stride`` bytes or ``width x bytes per pixel``)
    and given the band's size, then loaded as usual.
    """
    strips = _raw_strips(image)
    assert strips is not None
    pixel_bytes = sum(_bits(image)) // 8  # samples stored, extra ones (RGBX) included
    width = image.size[0]
    parts = []
    for codec, (tx0, ty0, tx1, ty1), offset, args in strips:
        r0, r1 = max(y0, ty0), min(y1, ty1)
        if r0 >= r1:
            continue
        row_bytes = args[1] or (tx1 - tx0) * pixel_bytes
        extents = (tx0, r0 - y0, tx1, r1 - y0)
        parts.append(ImageFile._Tile(codec, extents, offset + (r0 - ty0) * row_bytes, args))
    image._size = (width, y1 - y0)  # noqa: SLF001 - see the docstring
    image.tile = parts
    image.load()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb)


def predict_scene(
    runtime: Runtime,
    scene: Scene | str | os.PathLike,
    tile: int,
    stride: int | None = None,
    *,
    edge: str = "drop",
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[Tile, Prediction]]:
    """Label every tile of a scene, streaming (see the module docstring for the rules).

    Args:
        runtime: The model.
        scene: The scene (a path or an opened :class:`Scene`).
        tile: Tile side in scene pixels.
        stride: Step between tiles (default ``tile``: no overlap).
        edge: ``drop`` partial edge tiles, or ``pad`` them with zeros.
        batch_size: Tiles per ONNX Runtime call.
        progress: Called with (tiles done, total) after each batch.

    Raises:
        SceneError: If the scene cannot be read or is smaller than a tile with ``drop``.
    """
    scene = scene if isinstance(scene, Scene) else Scene(scene)
    tiles = tile_grid(scene.width, scene.height, tile, stride, edge)
    done, batch, pixels = 0, [], []
    for _, row in itertools.groupby(tiles, key=lambda t: t.row):
        row = list(row)
        band = scene.band(row[0].y, row[0].y + tile)
        for t in row:
            pixels.append(_tile_pixels(band, t, tile, runtime.image_size))
            batch.append(t)
            if len(batch) == batch_size:
                yield from _label_batch(runtime, batch, pixels)
                done += len(batch)
                batch, pixels = [], []
                if progress:
                    progress(done, len(tiles))
    if batch:
        yield from _label_batch(runtime, batch, pixels)
        if progress:
            progress(done + len(batch), len(tiles))


def _label_batch(
    runtime: Runtime, tiles: list[Tile], pixels: list[np.ndarray]
) -> Iterator[tuple[Tile, Prediction]]:
    labels = runtime.labels(runtime.predict_batch(np.stack(pixels)))
    return zip(tiles, labels, strict=True)


def _tile_pixels(band: np.ndarray, t: Tile, tile: int, size: tuple[int, int]) -> np.ndarray:
    pixels = band[: t.height, t.x : t.x + t.width]
    if pixels.shape[:2] != (tile, tile):
        padded = np.zeros((tile, tile, 3), dtype=np.uint8)
        padded[: t.height, : t.width] = pixels
        pixels = padded
    if (tile, tile) != tuple(size):
        return fit_image(Image.fromarray(pixels), size)
    return pixels


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, every 10% otherwise."""

    def __init__(self, label: str, stream: TextIO | None = None, every_s: float = 0.5) -> None:
        self.label, self.stream, self.every_s = label, stream or sys.stderr, every_s
        self._tty = self.stream.isatty()
        self._start = time.perf_counter()
        self._last, self._last_tenth = 0.0, -1

    def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` tiles."""
        now = time.perf_counter()
        tenth = done * 10 // max(1, total)
        finished = done >= total
        if self._tty and (now - self._last >= self.every_s or finished):
            end = "\n" if finished else ""
            self.stream.write(f"\r{self._line(done, total, now)}{end}")
        elif not self._tty and (tenth > self._last_tenth or finished):
            self.stream.write(self._line(done, total, now) + "\n")
        else:
            return
        self.stream.flush()
        self._last, self._last_tenth = now, tenth

    def _line(self, done: int, total: int, now: float) -> str:
        rate = done / max(1e-9, now - self._start)
        return f"{self.label}: {done}/{total} tiles ({done / max(1, total):.0%}), {rate:.0f}/s"


def write_tiles(
    path: str | os.PathLike,
    results: Iterator[tuple[Tile, Prediction]],
    *,
    transform: tuple[float, ...] | None = None,
    crs: str | None = None,
) -> dict[str, int]:
    """Write labelled tiles as CSV (``.csv``) or GeoJSON (``.geojson``/``.json``), atomically.

    CSV columns: ``row, col, x, y, class, prob`` (``x, y``: the tile's top-left pixel).
    GeoJSON: one polygon per tile (the part inside the scene), properties as the CSV's.

    Args:
        path: The output file; its suffix picks the format.
        results: ``(tile, prediction)`` pairs, e.g. from :func:`predict_scene`.
        transform: Pixel -> map affine ``(a, b, c, d, e, f)`` (``X = a*col + b*row + c``,
            ``Y = d*col + e*row + f``), from :func:`geotransform`; None: pixel coordinates.
        crs: The map coordinates' CRS (e.g. ``EPSG:32631``), written in the GeoJSON.

    Returns:
        Tile count per class.

    Raises:
        ValueError: If the suffix is neither CSV nor GeoJSON.
    """
    path = Path(path)
    kind = {".csv": "csv", ".geojson": "geojson", ".json": "geojson"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: the output must end in .csv or .geojson")
    counts: dict[str, int] = {}
    with atomic_open(path, "w", encoding="utf-8", newline="") as out:
        write = _write_csv if kind == "csv" else _write_geojson
        write(out, results, counts, transform, crs)
    return counts


def _write_csv(
    out: IO[str],
    results: Iterator[tuple[Tile, Prediction]],
    counts: dict[str, int],
    transform: tuple[float, ...] | None,
    crs: str | None,
) -> None:
    out.write("row,col,x,y,class,prob\n")
    for t, p in results:
        counts[p.label] = counts.get(p.label, 0) + 1
        out.write(f"{t.row},{t.col},{t.x},{t.y},{_csv_field(p.label)},{p.probability:.6f}\n")


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _write_geojson(
    out: IO[str],
    results: Iterator[tuple[Tile, Prediction]],
    counts: dict[str, int],
    transform: tuple[float, ...] | None,
    crs: str | None,
) -> None:
    head: dict[str, Any] = {"type": "FeatureCollection"}
    if transform is not None and crs:
        head["crs"] = {"type": "name", "properties": {"name": _crs_urn(crs)}}
    if transform is None:
        head["coordinates"] = "pixels: x right, y down, origin at the top-left corner"
    text = json.dumps(head)
    out.write(text[:-1] + ', "features": [\n')
    first = True
    for t, p in results:
        counts[p.label] = counts.get(p.label, 0) + 1
        corners = [(t.x, t.y), (t.x + t.width, t.y), (t.x + t.width, t.y + t.height),
                   (t.x, t.y + t.height), (t.x, t.y)]  # fmt: skip
        ring = [list(_apply(transform, x, y)) for x, y in corners]
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"row": t.row, "col": t.col, "x": t.x, "y": t.y,
                           "class": p.label, "prob": round(p.probability, 6)},
        }  # fmt: skip
        out.write(("" if first else ",\n") + json.dumps(feature))
        first = False
    out.write("\n]}\n")


def _apply(transform: tuple[float, ...] | None, x: float, y: float) -> tuple[float, float]:
    if transform is None:
        return float(x), float(y)
    a, b, c, d, e, f = transform
    return a * x + b * y + c, d * x + e * y + f


def _crs_urn(crs: str) -> str:
    if crs.upper().startswith("EPSG:"):
        return f"urn:ogc:def:crs:EPSG::{crs.split(':', 1)[1]}"
    return crs


def geotransform(path: str | os.PathLike) -> tuple[tuple[float, ...] | None, str | None]:
    """The pixel-corner -> map affine of a scene and its CRS, from GeoTIFF tags or a world file.

    Returns:
        ``((a, b, c, d, e, f), "EPSG:<code>" or None)``: ``X = a*col + b*row + c``,
        ``Y = d*col + e*row + f`` for pixel corner ``(col, row)``; ``(None, None)`` when the
        file is not georeferenced (or its tags are unreadable: no GDAL here).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            tags = dict(image.tag_v2) if image.format == "TIFF" else {}
    except (OSError, ValueError, SyntaxError):
        tags = {}
    transform, crs = _geotiff_transform(tags) if tags else (None, None)
    if transform is None:
        transform = _world_file(path)
    return transform, crs


def _geotiff_transform(tags: dict[int, Any]) -> tuple[tuple[float, ...] | None, str | None]:
    keys = _geokeys(tags.get(_GEOKEYS))
    crs_code = keys.get(3072) or keys.get(2048)  # Projected, then Geographic CRS
    crs = f"EPSG:{crs_code}" if crs_code and crs_code != 32767 else None
    shift = 0.5 if keys.get(1025) == 2 else 0.0  # RasterPixelIsPoint: values at centres
    transform = None
    if _TRANSFORM in tags and len(tags[_TRANSFORM]) >= 8:
        m = [float(v) for v in tags[_TRANSFORM]]
        transform = (m[0], m[1], m[3], m[4], m[5], m[7])
    elif _TIEPOINT in tags and _PIXEL_SCALE in tags and len(tags[_TIEPOINT]) >= 6:
        i, j, _, x0, y0, _ = (float(v) for v in tags[_TIEPOINT][:6])
        sx, sy = float(tags[_PIXEL_SCALE][0]), float(tags[_PIXEL_SCALE][1])
        transform = (sx, 0.0, x0 - i * sx, 0.0, -sy, y0 + j * sy)
    if transform is not None and shift:
        a, b, c, d, e, f = transform
        transform = (a, b, c - shift * (a + b), d, e, f - shift * (d + e))
    return transform, crs


def _geokeys(directory: Any) -> dict[int, int]:
    """GeoKeyDirectory entries stored inline (key -> short value)."""
    if not directory or len(directory) < 4:
        return {}
    values = [int(v) for v in directory]
    keys = {}
    for n in range(values[3]):
        key, location, _count, value = values[4 + 4 * n : 8 + 4 * n]
        if location == 0:
            keys[key] = value
    return keys


def _world_file(path: Path) -> tuple[float, ...] | None:
    for suffix in _WORLD_SUFFIXES.get(path.suffix.lower(), (".wld",)):
        for candidate in (path.with_suffix(suffix), path.with_suffix(suffix.upper())):
            if candidate.is_file():
                try:
                    a, d, b, e, c, f = (float(v) for v in candidate.read_text().split()[:6])
                except ValueError:
                    return None
                # world files give the centre of the top-left pixel: move to its corner
                return (a, b, c - 0.5 * (a + b), d, e, f - 0.5 * (d + e))
    return None
