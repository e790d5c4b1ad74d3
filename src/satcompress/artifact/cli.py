"""``satcompress export`` and ``satcompress inspect``: write and read deployable artifacts.

Usage::

    satcompress export --checkpoint runs/r18_w2         # QAT/PTQ run -> runs/r18_w2/model.satc
    satcompress export --checkpoint runs/r18 --output r18.satc  # fp32, pruned zeros cheap
    satcompress export --onnx model_int8.onnx --output m.satc   # any ONNX file
    satcompress inspect runs/r18_w2/model.satc [--all] [--json]
    satcompress eval --artifact runs/r18_w2/model.satc [--dataset ... --data-dir ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satcompress.artifact import ARTIFACT_SUFFIX
from satcompress.config import ConfigError

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
    default = f"<run>/model{ARTIFACT_SUFFIX}"
    export.add_argument("--output", type=Path, help=f"artifact file (default: {default})")
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
    manifest = export_artifact(
        args.checkpoint or args.onnx,
        args.output,
        from_onnx=args.onnx is not None,
        image_size=args.image_size,
        compress=not args.no_compress,
    )
    _print_summary(manifest["path"], manifest)
    return 0


def export_artifact(
    source: str | Path,
    output: str | Path | None = None,
    *,
    from_onnx: bool = False,
    image_size: int | None = None,
    compress: bool = True,
) -> dict[str, Any]:
    """Write the artifact of a QAT run, a PTQ run, an fp32 checkpoint or an ONNX file.

    Args:
        source: A QAT run directory (``qat.yaml``), a PTQ run directory (``model_int8.onnx``),
            an fp32 run directory or weights file with its card, or an ONNX file.
        output: The artifact path (default ``<run>/model.satc`` or ``<file>.satc``).
        from_onnx: ``source`` is an ONNX file.
        image_size: Input image size when the card does not give it (fp32 checkpoints).
        compress: Allow LZMA over the stored streams.

    Returns:
        The manifest written, with ``path`` and ``size_bytes``.

    Raises:
        FileNotFoundError: If ``source`` does not exist.
        ConfigError: If the image size is unknown.
    """
    from satcompress.artifact.format import load_artifact, write_artifact

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
        manifest = write_artifact(source, output, info=_onnx_info(source), compress=compress)
    elif source.is_dir() and (source / "qat.yaml").is_file():
        manifest = _export_qat_run(source, output, compress)
    elif source.is_dir() and (source / "model_int8.onnx").is_file():
        int8 = source / "model_int8.onnx"
        info = _onnx_info(int8)
        if (source / f"model{ARTIFACT_SUFFIX}").is_file():  # keep the run's description
            info = _description(load_artifact(source / f"model{ARTIFACT_SUFFIX}").manifest)
        manifest = write_artifact(int8, output, info=info, compress=compress)
    else:
        manifest = _export_fp32(source, output, image_size, compress)
    return {**manifest, "path": str(output)}


_DESCRIPTION = (
    "model", "classes", "input_spec", "image_size", "params", "macs", "recipe", "dataset",
    "data_dir", "split_dir", "split_fingerprint",
)  # fmt: skip


def _description(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest[k] for k in _DESCRIPTION if k in manifest}


def _data_info(source: dict[str, Any]) -> dict[str, Any]:
    """Where the data lives, from a card (its recipe) or a QAT run's ``source`` entry."""
    recipe = source.get("recipe") or {}
    return {
        "dataset": source.get("dataset") or recipe.get("dataset"),
        "data_dir": source.get("data_dir") or recipe.get("data_dir"),
        "split_dir": source.get("split_dir") or recipe.get("split_dir"),
        "split_fingerprint": source.get("split_fingerprint"),
    }


def _onnx_info(path: Path) -> dict[str, Any]:
    from satcompress.artifact.onnx import read_metadata

    meta = read_metadata(path)
    info = {k: meta[k] for k in ("model", "classes", "input_spec") if k in meta}
    info["recipe"] = {"stage": "export", "source": str(path)}
    return info


def _export_qat_run(run: Path, output: Path, compress: bool) -> dict[str, Any]:
    import torch

    from satcompress.artifact.format import write_artifact
    from satcompress.compress.quantize.api import artifact_info
    from satcompress.compress.quantize.export import export_qat_onnx, to_fake_quant_module
    from satcompress.compress.quantize.qat import load_qat_model
    from satcompress.evaluate import count_macs

    model, spec, settings = load_qat_model(run)
    source = settings["source"]
    image_size = tuple(source["image_size"])
    layer_bits = settings["layer_bits"]
    meta = {"model": source["model"], "classes": source["classes"]}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, bits, layers = export_qat_onnx(
            model, spec, image_size, Path(tmp) / "qat.onnx", layer_bits, meta
        )
        plain = to_fake_quant_module(model, torch.zeros(2, 3, *(spec.size or image_size)))
        info = artifact_info(
            source["model"],
            source["classes"],
            spec,
            image_size,
            params=sum(p.numel() for n, p in model.named_parameters() if "_quant." not in n),
            macs=count_macs(plain, spec.size or image_size),
            recipe={"stage": "quantize", "method": "qat", "qat": settings["qat"]},
            **_data_info(source),
        )
        return write_artifact(
            onnx_path, output, bits=bits, layers=layers, info=info, compress=compress
        )


def _export_fp32(
    source: Path, output: Path, image_size: int | None, compress: bool
) -> dict[str, Any]:
    from satcompress.artifact.format import write_artifact
    from satcompress.artifact.onnx import export_onnx
    from satcompress.checkpoint import load_trained
    from satcompress.compress.quantize.api import artifact_info
    from satcompress.evaluate import count_macs, count_params

    trained = load_trained(source)
    card = trained.card
    size = (image_size, image_size) if image_size else card.get("image_size")
    if size is None:
        raise ConfigError(f"{source}: its card gives no image size; pass --image-size")
    size = tuple(size)
    classes = card.get("classes") or [str(i) for i in range(card["num_classes"])]
    meta = {"model": card["model"], "classes": classes}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(trained.model, trained.input_spec, size, Path(tmp) / "m.onnx", meta)
        info = artifact_info(
            card["model"],
            classes,
            trained.input_spec,
            size,
            params=count_params(trained.model),
            macs=count_macs(trained.model, trained.input_spec.size or size),
            recipe={"stage": "export", **(card.get("recipe") or {})},
            **_data_info(card),
        )
        return write_artifact(onnx_path, output, info=info, compress=compress)


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

    stats = manifest["stats"]
    size, bound = int(manifest["size_bytes"]), float(stats["bound_bytes"])
    ratio = f"{size / bound:.3f}x" if bound else "n/a"
    print(
        f"{path}: satcompress artifact v{manifest['version']}, {artifact_format(manifest)}, "
        f"model {manifest.get('model', '?')}, {len(manifest.get('classes') or [])} classes"
    )
    print(
        f"  {size:,} bytes on disk; bound sum(params x bits)/8 = {bound:,.0f} bytes ({ratio}); "
        f"{stats['params']:,} params ({stats['quantized_params']:,} quantized, "
        f"{1 - stats['nonzero_params'] / max(1, stats['params']):.1%} zeros); "
        f"weight bits {stats['weight_bits'] or 'fp32'}"
    )
    if manifest.get("input_spec"):
        print(f"  input: uint8 images; {manifest['input_spec']}")


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


def eval_artifact(args: argparse.Namespace) -> dict[str, Any]:
    """``satcompress eval --artifact FILE``: the record of the artifact run in ONNX Runtime.

    The dataset comes from ``--dataset/--data-dir`` or, failing that, the manifest.
    """
    from satcompress.artifact.format import load_artifact
    from satcompress.compress.quantize.api import evaluate_artifact
    from satcompress.data import load_dataset
    from satcompress.evaluate import LatencyConfig

    manifest = load_artifact(args.artifact).manifest
    name = args.dataset or manifest.get("dataset")
    data_dir = args.data_dir or manifest.get("data_dir")
    if not name or not data_dir:
        raise ConfigError("give --dataset and --data-dir (the artifact does not name them)")
    image_size = args.image_size or (manifest.get("image_size") or [None])[0]
    dataset = load_dataset(
        name,
        data_dir,
        split_dir=args.split_dir or manifest.get("split_dir"),
        download=args.download,
        image_size=image_size,
        skip_bad_files=args.skip_bad_files,
    )
    latency = None if args.no_latency else LatencyConfig(threads=args.threads)
    return evaluate_artifact(
        args.artifact, dataset, split=args.split, run_dir=args.run_dir, latency=latency
    )
