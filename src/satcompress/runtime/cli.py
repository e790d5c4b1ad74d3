"""``python -m satcompress.runtime``: the device-side command (numpy, onnx, ONNX Runtime, Pillow).

Usage::

    python -m satcompress.runtime predict model.satc IMAGE_OR_FOLDER... [--json] [--threads N]
    python -m satcompress.runtime predict model.satc scene.tif --tile 64 [--stride 64]
        [--edge drop|pad] [--out tiles.csv|tiles.geojson]
    python -m satcompress.runtime info model.satc
    python -m satcompress.runtime export-onnx model.satc model.onnx [--saturation-safe]
    ... [--verify KEY.pub [--require-signature]]   # each command: check the signature first

``predict`` prints one line per image: ``path<TAB>class<TAB>probability`` (``--json``: one
JSON object per line, with every class's probability). With ``--tile`` the one input is a
scene cut into tiles (rules in :mod:`satcompress.runtime.tiles`); ``--out`` writes them as
CSV or GeoJSON and prints a per-class count, else one line per tile is printed. A folder is
searched recursively for images. Exit status 2 on a bad file, naming it.

``--verify KEY.pub`` checks the file's Ed25519 signature with that public key before
anything else of it is used (a signed file that fails is refused; an unsigned one is used
with a warning unless ``--require-signature``, which refuses it). Needs ``cryptography``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from satcompress.runtime.flags import add_verify_flags, verify_options, warn_unsigned
from satcompress.runtime.images import ImageError, list_images
from satcompress.runtime.saturation import INT8_KERNEL_POLICIES

PROG = "python -m satcompress.runtime"


def build_parser() -> argparse.ArgumentParser:
    """The command's parser."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    predict = sub.add_parser("predict", help="label images, a folder, or a scene's tiles")
    predict.add_argument("artifact", type=Path, help="the .satc file")
    predict.add_argument("inputs", type=Path, nargs="+", help="image files or folders, or a scene")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    predict.add_argument("--batch-size", type=int, default=64, help="images per call (64)")
    predict.add_argument(
        "--int8-kernels", choices=INT8_KERNEL_POLICIES, default="auto",
        help="auto: re-encode weights that would saturate on this CPU (default)",
    )  # fmt: skip
    predict.add_argument("--tile", type=int, help="cut the one input scene into NxN tiles")
    predict.add_argument("--stride", type=int, help="step between tiles (default: --tile)")
    predict.add_argument(
        "--edge", choices=("drop", "pad"), default="drop",
        help="partial tiles at the right/bottom edge: drop them (default) or zero-pad them",
    )  # fmt: skip
    predict.add_argument("--out", type=Path, help="with --tile: write tiles.csv or .geojson")
    predict.add_argument(
        "--skip-bad-files", action="store_true",
        help="report unreadable images on stderr and go on (default: stop at the first)",
    )  # fmt: skip
    predict.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    add_verify_flags(predict)
    predict.set_defaults(handler=cmd_predict)

    info = sub.add_parser("info", help="what the model is: classes, input, bits, size")
    info.add_argument("artifact", type=Path)
    add_verify_flags(info)
    info.set_defaults(handler=cmd_info)

    export = sub.add_parser("export-onnx", help="write the rebuilt ONNX graph for other runtimes")
    export.add_argument("artifact", type=Path)
    export.add_argument("output", type=Path, help="the .onnx file to write")
    export.add_argument(
        "--saturation-safe", action="store_true",
        help="store 8-bit weights as uint8 where int8 kernels could saturate (x86 w/o VNNI)",
    )  # fmt: skip
    add_verify_flags(export)
    export.set_defaults(handler=cmd_export_onnx)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from satcompress.runtime.satc import ArtifactError
    from satcompress.runtime.tiles import SceneError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ArtifactError, ImageError, SceneError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``predict``."""
    from satcompress.runtime.predict import Runtime

    if args.tile is None and (args.out or args.stride):
        raise ValueError("--out and --stride need --tile")
    if args.tile is not None and len(args.inputs) != 1:
        raise ValueError("--tile takes exactly one scene file")
    runtime = Runtime(
        args.artifact, threads=args.threads, int8_kernels=args.int8_kernels,
        **verify_options(args),
    )  # fmt: skip
    warn_unsigned(args, args.artifact, runtime.signature, PROG)
    if args.tile is not None:
        return _predict_scene(runtime, args)
    files = _image_files(args.inputs)
    bad = 0
    for path, prediction in _predict_files(runtime, files, args.batch_size, args.skip_bad_files):
        if prediction is None:
            bad += 1
            continue
        print(_line(str(path), prediction, runtime.classes, args.json))
    sys.stdout.flush()
    if bad:
        print(f"{PROG}: {bad} unreadable image(s) skipped", file=sys.stderr)
    return 1 if bad else 0


def _image_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise FileNotFoundError(f"no images under {item}")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"no image or folder at {item}")
    return files


def _predict_files(
    runtime: Any, files: list[Path], batch_size: int, skip_bad: bool
) -> Iterator[tuple[Path, Any]]:
    """(path, prediction) per file, batched; an unreadable file gives (path, None) if skipped."""
    from satcompress.runtime.images import load_image

    for start in range(0, len(files), batch_size):
        chunk, pixels = [], []
        for path in files[start : start + batch_size]:
            try:
                pixels.append(load_image(path, runtime.image_size))
            except ImageError as err:
                if not skip_bad:
                    raise
                print(f"{PROG}: skipped {err}", file=sys.stderr)
                yield path, None
                continue
            chunk.append(path)
        if chunk:
            labels = runtime.labels(runtime.predict_batch(np.stack(pixels)))
            yield from zip(chunk, labels, strict=True)


def _line(name: str, prediction: Any, classes: list[str], as_json: bool, **extra: Any) -> str:
    if as_json:
        probs = zip(classes, prediction.probabilities.tolist(), strict=True)
        record = {
            "path": name,
            **extra,
            "class": prediction.label,
            "probability": round(prediction.probability, 6),
            "probabilities": {c: round(p, 6) for c, p in probs},
        }
        return json.dumps(record)
    fields = [name, *(str(v) for v in extra.values()), prediction.label]
    return "\t".join([*fields, f"{prediction.probability:.4f}"])


def _predict_scene(runtime: Any, args: argparse.Namespace) -> int:
    from satcompress.runtime.tiles import Progress, Scene, geotransform, predict_scene, write_tiles

    path = args.inputs[0]
    scene = Scene(path)
    progress = None if args.quiet else Progress(str(path))
    results = predict_scene(
        runtime, scene, args.tile, args.stride, edge=args.edge, batch_size=args.batch_size,
        progress=progress,
    )  # fmt: skip
    if args.out is None:
        for tile, prediction in results:
            extra = {"row": tile.row, "col": tile.col, "x": tile.x, "y": tile.y}
            print(_line(str(path), prediction, runtime.classes, args.json, **extra))
        return 0
    transform, crs = geotransform(path) if args.out.suffix.lower() != ".csv" else (None, None)
    counts = write_tiles(args.out, results, transform=transform, crs=crs)
    total = sum(counts.values())
    summary = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    where = f" in {crs or 'map coordinates'}" if transform is not None else ""
    print(f"{path}: {total} tiles ({scene.width}x{scene.height}) -> {args.out}{where}; {summary}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``info``."""
    from satcompress.runtime.satc import artifact_format, load_artifact, manifest_card

    artifact = load_artifact(args.artifact, **verify_options(args))
    warn_unsigned(args, args.artifact, artifact.signature, PROG)
    card = manifest_card(artifact.manifest)
    stats = artifact.manifest["stats"]
    print(
        f"{args.artifact}: {card.get('model', 'model')}, {artifact_format(artifact.manifest)}, "
        f"{artifact.size_bytes:,} bytes, {stats['params']:,} params"
    )
    print(f"  classes: {', '.join(card.get('classes') or [])}")
    print(f"  input: uint8 RGB images; {card.get('input') or {}}")
    signature = artifact.signature
    print(f"  signature: {signature.describe() if signature else 'none (unsigned)'}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """``export-onnx``."""
    from satcompress.runtime.satc import load_artifact

    artifact = load_artifact(args.artifact, **verify_options(args))
    warn_unsigned(args, args.artifact, artifact.signature, PROG)
    written = artifact.save_onnx(args.output, saturation_safe=args.saturation_safe)
    print(f"{written}: {written.stat().st_size:,} bytes")
    return 0
