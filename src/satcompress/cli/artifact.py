"""``satcompress export`` and ``satcompress inspect``: write and read deployable artifacts.

Usage::

    satcompress export --checkpoint runs/r18_w2         # any stage's run -> <run>/model.satc
    satcompress export --checkpoint runs/r18 --output r18.satc  # fp32, pruned zeros cheap
    satcompress export --onnx model_int8.onnx --output m.satc   # any ONNX file
    satcompress export --artifact m.satc --onnx-out m.onnx [--saturation-safe]
        # its rebuilt ONNX graph (int8 QDQ), for OpenVINO, TensorRT or a converter
    satcompress inspect runs/r18_w2/model.satc [--all] [--json]
    satcompress eval --artifact runs/r18_w2/model.satc [--dataset ... --data-dir ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satcompress.artifact import ARTIFACT_SUFFIX

if TYPE_CHECKING:
    from satcompress.artifact.format import Artifact

_QUANT_META = ("scale", "zero_point")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``inspect`` to the ``satcompress`` command."""
    export = subparsers.add_parser(
        "export", help="write the deployable artifact of a trained, pruned or quantized model"
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", type=Path, help="QAT or PTQ run dir, or an fp32 run dir / weights file"
    )
    source.add_argument("--onnx", type=Path, help="any ONNX file (e.g. an int8 QDQ model)")
    source.add_argument(
        "--artifact", type=Path,
        help=f"a {ARTIFACT_SUFFIX} file: with --onnx-out, write its rebuilt ONNX graph",
    )  # fmt: skip
    default = f"<run>/model{ARTIFACT_SUFFIX}"
    export.add_argument("--output", type=Path, help=f"artifact file (default: {default})")
    export.add_argument(
        "--onnx-out", type=Path,
        help="also write the plain ONNX graph (int8 QDQ, uint8 image input) for OpenVINO, "
        "TensorRT or a converter; with --artifact, only that",
    )  # fmt: skip
    export.add_argument(
        "--saturation-safe", action="store_true",
        help="with --onnx-out: store 8-bit weights as uint8 where ONNX Runtime's int8 kernels "
        "could saturate (x86 CPUs without VNNI; exact, slower there)",
    )  # fmt: skip
    export.add_argument("--image-size", type=int, help="input image size, if the card lacks it")
    export.add_argument("--no-compress", action="store_true", help="no LZMA on the payload")
    export.set_defaults(handler=cmd_export)

    inspect = subparsers.add_parser(
        "inspect", help="what an artifact holds: per-layer bits, sparsity and bytes"
    )
    inspect.add_argument("file", type=Path, help="the artifact file")
    inspect.add_argument("--all", action="store_true", help="also list scales, zero points...")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.set_defaults(handler=cmd_inspect)


def cmd_export(args: argparse.Namespace) -> int:
    """``satcompress export``."""
    if args.artifact is not None:
        if args.onnx_out is None or args.output is not None:
            raise ValueError("--artifact takes --onnx-out (and no --output): it is already one")
        path = export_plain_onnx(args.artifact, args.onnx_out, args.saturation_safe)
        print(f"{path}: {path.stat().st_size:,} bytes, ONNX graph of {args.artifact}")
        return 0
    if args.saturation_safe and args.onnx_out is None:
        raise ValueError("--saturation-safe applies to --onnx-out")
    manifest = export_artifact(
        args.checkpoint or args.onnx,
        args.output,
        from_onnx=args.onnx is not None,
        image_size=args.image_size,
        compress=not args.no_compress,
    )
    _print_summary(manifest["path"], manifest)
    if args.onnx_out is not None:
        path = export_plain_onnx(manifest["path"], args.onnx_out, args.saturation_safe)
        print(f"{path}: {path.stat().st_size:,} bytes, its ONNX graph")
    return 0


def export_plain_onnx(
    artifact: str | Path, output: str | Path, saturation_safe: bool = False
) -> Path:
    """Write an artifact's rebuilt ONNX graph: what its ``.satc`` session runs.

    The graph takes uint8 ``(B, 3, H, W)`` images named ``image`` and returns ``logits``; a
    quantized artifact gives an int8 QDQ graph other runtimes (OpenVINO, TensorRT, converters)
    read. ``saturation_safe`` stores 8-bit weights that ONNX Runtime's uint8 x int8 kernels
    could saturate as uint8 (see :mod:`satcompress.runtime.saturation`).
    """
    from satcompress.artifact.format import load_artifact

    return load_artifact(artifact).save_onnx(output, saturation_safe=saturation_safe)


def export_artifact(
    source: str | Path,
    output: str | Path | None = None,
    *,
    from_onnx: bool = False,
    image_size: int | None = None,
    compress: bool = True,
) -> dict[str, Any]:
    """Write the artifact of any stage's output, or of a plain ONNX file.

    Args:
        source: A run directory or weights file of any stage (QAT at its bits, PTQ as its
            int8 graph, others in fp32), a ``.satc``, or an ONNX file (``from_onnx``).
        output: The artifact path (default ``<run>/model.satc`` or ``<file>.satc``).
        from_onnx: ``source`` is an ONNX file.
        image_size: Input image size when the card does not give it.
        compress: Allow LZMA over the stored streams.

    Returns:
        The manifest written, with ``path`` and ``size_bytes``.

    Raises:
        FileNotFoundError: If ``source`` does not exist.
    """
    from satcompress.pipeline import ExportConfig, export, load

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"nothing to export at {source}")
    default = (
        source / f"model{ARTIFACT_SUFFIX}"
        if source.is_dir()
        else source.with_suffix(ARTIFACT_SUFFIX)
    )
    output = Path(output or default)
    if from_onnx:
        return {**_export_onnx(source, output, compress), "path": str(output)}
    model = load(source)
    if image_size and not model.card.get("image_size"):
        model.card["image_size"] = [image_size, image_size]
    result = export(model, None, ExportConfig(output=str(output), compress=compress))
    return {**result.details, "path": str(output)}


def _export_onnx(path: Path, output: Path, compress: bool) -> dict[str, Any]:
    from satcompress.card import derive_card
    from satcompress.pipeline import build_artifact
    from satcompress.runtime.onnx import read_metadata

    meta = read_metadata(path)
    card = derive_card(
        None,
        "export",
        {"source": str(path)},
        model=meta.get("model", path.stem),
        classes=meta.get("classes"),
        input=meta.get("input_spec") or {},
    )
    return build_artifact(path, card, output, params=0, macs=0, compress=compress)


def cmd_inspect(args: argparse.Namespace) -> int:
    """``satcompress inspect``."""
    from satcompress.artifact.format import load_artifact

    artifact = load_artifact(args.file)
    if args.json:
        print(json.dumps(artifact.manifest, indent=1))
        return 0
    _print_summary(args.file, {**artifact.manifest, "size_bytes": artifact.size_bytes})
    _print_layers(artifact, show_all=args.all)
    return 0


def _print_summary(path: Any, manifest: dict[str, Any]) -> None:
    from satcompress.artifact.format import artifact_format
    from satcompress.artifact.manifest import manifest_card

    stats = manifest["stats"]
    size, bound = int(manifest["size_bytes"]), float(stats["bound_bytes"])
    ratio = f"{size / bound:.3f}x" if bound else "n/a"
    card = manifest_card(manifest)
    print(
        f"{path}: satcompress artifact v{manifest['version']}, {artifact_format(manifest)}, "
        f"model {card.get('model', '?')}, {len(card.get('classes') or [])} classes"
    )
    print(
        f"  {size:,} bytes on disk; bound sum(params x bits)/8 = {bound:,.0f} bytes ({ratio}); "
        f"{stats['params']:,} params ({stats['quantized_params']:,} quantized, "
        f"{1 - stats['nonzero_params'] / max(1, stats['params']):.1%} zeros); "
        f"weight bits {stats['weight_bits'] or 'fp32'}"
    )
    if card.get("input"):
        print(f"  input: uint8 images; {card['input']}")
    stages = [entry["stage"] for entry in card.get("lineage", [])]
    if stages:
        print(f"  lineage: {' -> '.join(stages)}")


def _print_layers(artifact: Artifact, show_all: bool) -> None:
    rows = artifact.layers()
    shown = [r for r in rows if show_all or r["role"] not in _QUANT_META]
    width = max([len(str(r["layer"] or r["name"])) for r in shown] + [5])
    header = f"  {'layer':<{width}}  {'role':<10} {'shape':<18} {'bits':>4} {'sparsity':>8} "
    print(header + f"{'encoding':<13} {'bytes':>10}")
    for r in shown:
        shape = "x".join(str(d) for d in r["shape"]) or "scalar"
        print(
            f"  {str(r['layer'] or r['name']):<{width}}  {r['role']:<10} {shape:<18} "
            f"{r['bits']:>4} {r['sparsity']:>8.1%} {r['encoding']:<13} {r['bytes']:>10,}"
        )
    hidden = [r for r in rows if r not in shown]
    if hidden:
        total = sum(r["bytes"] for r in hidden)
        print(f"  + {len(hidden)} scales/zero points: {total:,} bytes (--all lists them)")
