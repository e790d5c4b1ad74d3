"""``satcompress export`` and ``satcompress inspect``: write and read deployable artifacts.

Usage::

    satcompress export --checkpoint runs/r18_w2         # any stage's run -> <run>/model.satc
    satcompress export --checkpoint runs/r18 --output r18.satc  # fp32, pruned zeros cheap
    satcompress export --onnx model_int8.onnx --output m.satc   # any ONNX file
    satcompress export --artifact m.satc --onnx-out m.onnx [--saturation-safe]
        # its rebuilt ONNX graph (int8 QDQ), for OpenVINO, TensorRT or a converter
    satcompress inspect runs/r18_w2/model.satc [--all] [--json]
    satcompress eval --artifact runs/r18_w2/model.satc [--dataset ... --data-dir ...]
    satcompress export --checkpoint runs/q --sign keys/ground    # signed (satcompress keygen)
    satcompress inspect m.satc --verify keys/ground.pub [--require-signature]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satcompress.artifact import ARTIFACT_SUFFIX
from satcompress.cli.common import (
    add_sign_flag,
    sign_artifact,
    signing_key,
    verify_artifact,
)
from satcompress.config import ConfigError
from satcompress.runtime.flags import add_verify_flags

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
    add_sign_flag(export)
    export.set_defaults(handler=cmd_export)

    inspect = subparsers.add_parser(
        "inspect", help="what an artifact holds: per-layer bits, sparsity and bytes"
    )
    inspect.add_argument("file", type=Path, help="the artifact file")
    inspect.add_argument("--all", action="store_true", help="also list scales, zero points...")
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    add_verify_flags(inspect)
    inspect.set_defaults(handler=cmd_inspect)


def cmd_export(args: argparse.Namespace) -> int:
    """``satcompress export``."""
    if args.artifact is not None:
        if args.onnx_out is None or args.output is not None:
            raise ValueError("--artifact takes --onnx-out (and no --output): it is already one")
        if args.sign is not None:
            raise ConfigError(
                f"--sign signs the .satc export writes; sign {args.artifact} itself with "
                "satcompress sign FILE --key KEY"
            )
        path = export_plain_onnx(args.artifact, args.onnx_out, args.saturation_safe)
        print(f"{path}: {path.stat().st_size:,} bytes, ONNX graph of {args.artifact}")
        return 0
    if args.saturation_safe and args.onnx_out is None:
        raise ValueError("--saturation-safe applies to --onnx-out")
    key = signing_key(args)
    manifest = export_artifact(
        args.checkpoint or args.onnx,
        args.output,
        from_onnx=args.onnx is not None,
        image_size=args.image_size,
        compress=not args.no_compress,
    )
    sign_artifact(manifest["path"], key)
    _print_summary(manifest["path"], _load(manifest["path"]))
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
    artifact = verify_artifact(args, args.file)
    if args.json:
        print(json.dumps(artifact.manifest, indent=1))
        return 0
    _print_summary(args.file, artifact)
    _print_layers(artifact, show_all=args.all)
    return 0


def _load(path: str | Path) -> Artifact:
    from satcompress.artifact.format import load_artifact

    return load_artifact(path)


def _print_summary(path: Any, artifact: Artifact) -> None:
    from satcompress.artifact.format import artifact_format
    from satcompress.artifact.manifest import manifest_card

    manifest = artifact.manifest
    stats = manifest["stats"]
    size, bound = artifact.size_bytes, float(stats["bound_bytes"])
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
        f"weight bits {_weight_bits(artifact)}"
    )
    if card.get("input"):
        print(f"  input: uint8 images; {card['input']}")
    stages = [entry["stage"] for entry in card.get("lineage", [])]
    if stages:
        print(f"  lineage: {' -> '.join(stages)}")
    signature = artifact.signature
    print(f"  signature: {signature.describe() if signature else 'none (unsigned)'}")


def _narrower(artifact: Artifact) -> dict[str, tuple[int, int]]:
    """The integer tensors whose values span less than their storage's range: (lo, hi)."""
    entries = {t["name"]: t for t in artifact.manifest["tensors"]}
    return {
        name: (lo, hi)
        for name, (lo, hi) in artifact.value_ranges().items()
        if (lo, hi) != (entries[name]["levels"]["lo"], entries[name]["levels"]["hi"])
    }


def _weight_bits(artifact: Artifact) -> str:
    """The weights' storage bit-widths, and their values' range where it is narrower.

    PTQ's default ``reduce_range`` weights lie in [-64, 64] in 8-bit codes: "[8] (values
    within [-64, 64])", not a bare "[8]".
    """
    from satcompress.runtime.pack import value_bits

    stored = artifact.manifest["stats"]["weight_bits"]
    if not stored:
        return "fp32"
    narrower = _narrower(artifact)
    weights = [
        t for t in artifact.manifest["tensors"] if t["role"] == "weight" and t["name"] in narrower
    ]
    if not weights:
        return str(stored)
    low = min(narrower[t["name"]][0] for t in weights)
    high = max(narrower[t["name"]][1] for t in weights)
    needed = max(value_bits(*narrower[t["name"]], t["dtype"] == "int8") for t in weights)
    fits = f", which fit {needed} bits" if needed < max(t["bits"] for t in weights) else ""
    return f"{stored} (values within [{low}, {high}]{fits})"


def _print_layers(artifact: Artifact, show_all: bool) -> None:
    rows = artifact.layers()
    weights = {r["name"] for r in rows if r["role"] == "weight"}
    narrower = {name: s for name, s in _narrower(artifact).items() if name in weights}
    shown = [r for r in rows if show_all or r["role"] not in _QUANT_META]
    width = max([len(str(r["layer"] or r["name"])) for r in shown] + [5])
    header = f"  {'layer':<{width}}  {'role':<10} {'shape':<18} {'bits':>4} {'sparsity':>8} "
    values = "  values" if any(r["name"] in narrower for r in shown) else ""
    print(header + f"{'encoding':<13} {'bytes':>10}{values}")
    for r in shown:
        shape = "x".join(str(d) for d in r["shape"]) or "scalar"
        span = narrower.get(r["name"])
        print(
            f"  {str(r['layer'] or r['name']):<{width}}  {r['role']:<10} {shape:<18} "
            f"{r['bits']:>4} {r['sparsity']:>8.1%} {r['encoding']:<13} {r['bytes']:>10,}"
            + (f"  [{span[0]}, {span[1]}]" if span else "")
        )
    hidden = [r for r in rows if r not in shown]
    if hidden:
        total = sum(r["bytes"] for r in hidden)
        print(f"  + {len(hidden)} scales/zero points: {total:,} bytes (--all lists them)")
    if values:
        print("  values: weights spanning less than their bits allow (e.g. PTQ's reduce_range)")
