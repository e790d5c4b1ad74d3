"""Quantization benchmark: PTQ int8 and QAT 8..1 bits of the baseline models on EuroSAT 64x64.

Writes ``results/quantize.json``: one record per variant in the shared schema plus
``bound_bytes`` (sum(params x bits) / 8) next to ``size_bytes`` (the artifact on disk):

* ``<model>-fp32``: the fp32 ONNX baseline (accuracy, size, latency);
* ``<model>-ort-default``: ONNX Runtime ``quantize_static`` with default settings;
* ``<model>-nncf-default``: NNCF PTQ with default settings (if ``nncf`` is installed);
* ``<model>-ptq-int8``: satcompress PTQ with full 8-bit weights (``reduce_range=False``,
  the default before 2026-12-03; its artifact);
* ``<model>-ptq-int8-w7``: satcompress PTQ as it is by default, 7-bit weights
  (``reduce_range``), which ONNX Runtime runs on its fast kernels exactly on x86 CPUs
  without VNNI too;
* ``<model>-qat-w<b>``: satcompress QAT at ``b`` bits (ResNet-18: 8, 4, 3, 2, 1;
  MobileNetV2: 8, 4, 2), ``--qat-epochs`` epochs each; a diverged run is recorded with
  ``status: diverged`` (its artifact holds the last good checkpoint);
* ``<model>-qat-w<b>-sparse50``: that QAT model with 50% of each layer's weights zeroed by
  magnitude (no fine-tuning), to show pruned zeros shrinking the artifact (not at 1 bit,
  whose +-1 code has no zero).

Resumable: finished rows are kept; an interrupted QAT run continues from its last checkpoint.
The fp32 models are the baseline runs (``benchmarks/baseline.py``, same ``--runs-dir``), or
``--checkpoint model=PATH``.

    python benchmarks/quantize.py --data-dir ../shared/data
    # the README's rows: the shared ResNet-18, then the baseline MobileNetV2
    python benchmarks/quantize.py --models resnet18 --kd --qat-epochs 3 \
        --qat-epochs-map 8=1 4=2 3=2 1=2 \
        --checkpoint resnet18=../shared/models/resnet18_eurosat64.safetensors
    python benchmarks/quantize.py --models mobilenet_v2 --kd --qat-epochs 3 \
        --qat-lr-map 8=0.005 --depthwise-bits 8 --quant-after-activation
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import satcompress as sc
from satcompress.artifact.format import write_artifact
from satcompress.compress.quantize import PTQConfig, QATConfig
from satcompress.compress.quantize.ptq import ImageReader, calibration_images
from satcompress.compress.quantize.qat import qat_train_config
from satcompress.evaluate import count_macs, count_params, evaluate_onnx
from satcompress.evaluate.artifact import evaluate_artifact
from satcompress.experiments import (
    RecordList,
    baseline_config,
    benchmark_parser,
    checkpoint_record,
    find_run_dir,
    given_checkpoints,
    load_eurosat,
    report_only,
    retime,
)
from satcompress.models.deployable import export_onnx
from satcompress.pipeline import quantize
from satcompress.pipeline.quantize import export_qat
from satcompress.report import format_table

BITS = {"resnet18": [8, 4, 3, 2, 1], "mobilenet_v2": [8, 4, 2]}


def baseline_run(model: str, args: argparse.Namespace) -> Path:
    """The fp32 run of ``model``: ``--checkpoint model=PATH`` or the baseline benchmark's."""
    given = given_checkpoints(args.checkpoint)
    if model in given:
        return given[model]
    config = baseline_config(model, args.data_dir, epochs=args.epochs, threads=args.threads)
    run = find_run_dir(args.runs_dir, config)
    if not (run / "model.safetensors").is_file():
        raise SystemExit(f"no trained {model} at {run}: run benchmarks/baseline.py first")
    return run


def fp32_row(run: Path, dataset, model: str, work: Path) -> dict:
    bound = count_params(sc.load_trained(run).model) * 4
    return checkpoint_record(model, run, dataset, work, bound_bytes=bound, status="ok")


def ort_default_row(run: Path, dataset, model: str, work: Path, images: np.ndarray) -> dict:
    """ONNX Runtime ``quantize_static`` as a user would call it: every default."""
    from onnxruntime.quantization import quantize_static

    trained = sc.load_trained(run)
    fp32 = export_onnx(trained.model, trained.input_spec, dataset.image_size, work / "fp32.onnx")
    int8 = work / "ort_default.onnx"
    quantize_static(str(fp32), str(int8), ImageReader(images))
    return _onnx_row(int8, trained, dataset, model, "ort-default", work)


def nncf_default_row(run: Path, dataset, model: str, work: Path, images: np.ndarray) -> dict:
    """NNCF PTQ with default settings on the fp32 ONNX model, run in ONNX Runtime."""
    import nncf
    import onnx

    trained = sc.load_trained(run)
    fp32 = export_onnx(trained.model, trained.input_spec, dataset.image_size, work / "fp32.onnx")
    batches = [{"image": images[i : i + 1]} for i in range(len(images))]
    quantized = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(batches))
    int8 = work / "nncf_default.onnx"
    onnx.save(quantized, str(int8))
    return _onnx_row(int8, trained, dataset, model, "nncf-default", work)


def _onnx_row(path: Path, trained, dataset, model: str, stage: str, work: Path) -> dict:
    manifest = write_artifact(path, work / f"{stage}.satc")  # for its bound only
    extra = {"bound_bytes": manifest["stats"]["bound_bytes"], "status": "ok"}
    return evaluate_onnx(
        path,
        dataset,
        trained.input_spec,
        model_name=model,
        params=count_params(trained.model),
        macs=count_macs(trained.model, trained.input_spec.size or dataset.image_size),
        recipe={"stage": stage},
        file_format="onnx-int8",
        extra={**extra, "onnx_path": str(path)},
    )


def ptq_row(run: Path, dataset, model: str, out: Path, config: PTQConfig) -> dict:
    return quantize(run, dataset, config, out).record


def _per_bits(items: list[str], cast: type) -> dict[int, Any]:
    return {int(b): cast(v) for b, v in (item.split("=", 1) for item in items)}


def qat_config(model: str, bits: int, args: argparse.Namespace) -> QATConfig:
    """The QAT recipe of one row: ``--qat-epochs(-map)``, ``--qat-lr-map``, ``--kd`` and
    ``--depthwise-bits`` (MobileNetV2's depthwise convolutions below that bit-width)."""
    depthwise = args.depthwise_bits if model == "mobilenet_v2" else None
    return QATConfig(
        bits=bits,
        epochs=_per_bits(args.qat_epochs_map, int).get(bits, args.qat_epochs),
        lr=_per_bits(args.qat_lr_map, float).get(bits),
        depthwise_bits=depthwise if depthwise and bits < depthwise else None,
        quant_after_activation=args.quant_after_activation,
        teacher="self" if args.kd else None,
    )


def qat_run_name(config: QATConfig, args: argparse.Namespace) -> str:
    """Cache folder suffix of a QAT row: every recipe setting that differs between rows."""
    name = f"-qat-w{config.bits}-e{config.epochs}{'-kd' if config.teacher else ''}"
    name += f"-lr{config.lr:g}" if config.lr else ""
    name += f"-dw{config.depthwise_bits}" if config.depthwise_bits else ""
    name += "-aa" if config.quant_after_activation else ""
    return name + (f"-limit{args.limit_batches}" if args.limit_batches else "")


def qat_row(run: Path, dataset, model: str, config: QATConfig, out: Path, args) -> dict:
    train_config = None
    overrides = {"threads": args.threads, "limit_batches": args.limit_batches}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:  # else quantize() derives the QAT recipe from the card alone
        trained = sc.load_trained(run)
        train_config = qat_train_config(trained.card, config, trained.input_spec, overrides)
    resume = (out / "checkpoints" / "last.ckpt").is_file()
    return quantize(run, dataset, config, out, train_config=train_config, resume=resume).record


def sparse_row(qat_run: Path, dataset, model: str, out: Path) -> dict:
    """The QAT model with 50% of each quantized layer's weights zeroed by magnitude."""
    from satcompress.compress.quantize.qat import quant_layers

    trained = sc.load(qat_run)
    with torch.no_grad():
        for layer in quant_layers(trained.model).values():
            w = layer.weight
            w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
    out.mkdir(parents=True, exist_ok=True)
    export_qat(trained, trained.card, out / "model.satc")
    return evaluate_artifact(out / "model.satc", dataset, extra={"status": "ok", "sparsity": 0.5})


def _table_order(record: dict) -> tuple:
    """fp32, the plain tools, PTQ, then QAT from 8 bits down (each dense, then sparse)."""
    stage = record["id"].removeprefix(f"{record['model']}-")
    fixed = {"fp32": 0, "ort-default": 1, "nncf-default": 2, "ptq-int8": 3, "ptq-int8-w7": 4}
    if stage in fixed:
        return record["model"], fixed[stage]
    bits = int(stage.split("-")[1].removeprefix("w"))
    return record["model"], 10 + 2 * (8 - bits) + stage.endswith("sparse50")


def _speed_up(base: dict | None, latency: dict | None) -> str:
    """``"3.10x / 2.95x"``: how many times faster than ``base`` at batch 1 and 64."""
    if not base or not latency:
        return "-"
    return " / ".join(
        f"{base[k] / latency[k]:.2f}x" for k in ("bs1", "bs64") if k in latency and k in base
    )


def _one_thread(record: dict | None) -> dict | None:
    """The record's 1-thread latencies, the steadier ratio on a 2-vCPU machine (retime)."""
    return (record or {}).get("latency_by_threads", {}).get("1")


def markdown_table(records: list[dict]) -> str:
    rows = []
    fp32 = {r["model"]: r for r in records if r["id"].endswith("-fp32")}
    for r in sorted(records, key=_table_order):
        base = fp32.get(r["model"])
        delta = f"{(r['accuracy'] - base['accuracy']) * 100:+.2f}" if base else "-"
        lat = r["latency_ms"]
        speed = _speed_up(base and base["latency_ms"], lat)
        single = _speed_up(_one_thread(base), _one_thread(r))
        bound = r.get("bound_bytes") or 0
        fake = f"{r['pytorch_accuracy'] * 100:.2f}%" if r.get("pytorch_accuracy") else "-"
        rows.append(
            (
                r["id"],
                f"{r['accuracy'] * 100:.2f}%",
                delta,
                fake,
                f"{r['size_bytes']:,}",
                f"{bound:,.0f}",
                f"{r['size_bytes'] / bound if bound else 0:.3f}",
                f"{lat.get('bs1', 0):.2f} / {lat.get('bs64', 0):.1f}",
                speed,
                single,
                r.get("status", "ok"),
            )
        )
    header = (
        "variant",
        "test acc. (ORT)",
        "vs fp32",
        "PyTorch fake-quant acc.",
        "bytes on disk",
        "bound",
        "ratio",
        "ORT bs1 / bs64 (ms)",
        "speed-up bs1 / bs64",
        "at 1 thread",
        "status",
    )
    return format_table(header, "lrrrrrrrrrl", rows, records)


def run_model(model: str, args: argparse.Namespace, records: RecordList, dataset, images) -> None:
    """Every row of one model (finished rows are skipped)."""
    root = args.runs_dir / "quantize"
    run = baseline_run(model, args)
    key = f"{model}-{run.name}"
    work = root / f"{key}-onnx"  # the plain tools' files, kept for --retime
    work.mkdir(parents=True, exist_ok=True)
    records.get_or_run(f"{model}-fp32", lambda: fp32_row(run, dataset, model, work / "fp32"))
    records.get_or_run(
        f"{model}-ort-default", lambda: ort_default_row(run, dataset, model, work, images)
    )
    if importlib.util.find_spec("nncf") is not None:
        records.get_or_run(
            f"{model}-nncf-default", lambda: nncf_default_row(run, dataset, model, work, images)
        )
    else:
        print("nncf is not installed (pip install nncf): the NNCF default row is skipped")
    full_range = PTQConfig(reduce_range=False)
    records.get_or_run(
        f"{model}-ptq-int8", lambda: ptq_row(run, dataset, model, root / f"{key}-ptq", full_range)
    )
    records.get_or_run(  # the default: fast and exact on x86 CPUs without VNNI too
        f"{model}-ptq-int8-w7",
        lambda: ptq_row(run, dataset, model, root / f"{key}-ptq-w7", PTQConfig()),
    )
    qat_bits = [] if args.ptq_only else BITS[model]
    for bits in [b for b in qat_bits if not args.bits or b in args.bits]:
        config = qat_config(model, bits, args)
        out = root / f"{key}{qat_run_name(config, args)}"
        row = f"{model}-qat-w{bits}"
        records.get_or_run(row, lambda c=config, o=out: qat_row(run, dataset, model, c, o, args))
        if bits == 1:  # a 1-bit code is +-1: with zeros it is a ternary (1.58-bit) model
            continue
        records.get_or_run(
            f"{row}-sparse50",
            lambda o=out: sparse_row(o, dataset, model, o.with_name(o.name + "-sparse50")),
        )
    for r in records.records:
        if r["model"] == model:
            print(f"{r['id']}: {r['accuracy'] * 100:.2f}%, {r['size_bytes']:,} bytes")


def main() -> None:
    parser = benchmark_parser(__doc__, "results/quantize.json")
    parser.add_argument("--models", nargs="+", default=list(BITS), choices=list(BITS))
    parser.add_argument("--checkpoint", nargs="*", default=[], metavar="MODEL=PATH")
    parser.add_argument("--epochs", type=int, default=20, help="the baseline's epochs (its key)")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--bits", type=int, nargs="*", help="only these QAT bit-widths")
    parser.add_argument("--ptq-only", action="store_true", help="no QAT rows")
    parser.add_argument(
        "--qat-epochs-map",
        nargs="*",
        default=[],
        metavar="BITS=EPOCHS",
        help="per-bit-width QAT epochs, e.g. 8=1 4=2 (others: --qat-epochs)",
    )
    parser.add_argument(
        "--qat-lr-map",
        nargs="*",
        default=[],
        metavar="BITS=LR",
        help="per-bit-width QAT peak LR, e.g. 8=0.002 (others: a tenth of the recipe's)",
    )
    parser.add_argument(
        "--depthwise-bits",
        type=int,
        default=None,
        help="MobileNetV2: depthwise convolutions at these bits in rows below them",
    )
    parser.add_argument(
        "--quant-after-activation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="QAT output quantizers after each conv's ReLU/ReLU6 (QATConfig; default on)",
    )
    parser.add_argument(
        "--limit-batches", type=int, default=None, help="smoke test: QAT batches per epoch"
    )
    parser.add_argument("--kd", action="store_true", help="QAT distils from the fp32 model")
    parser.add_argument("--calibration-images", type=int, default=512)
    args = parser.parse_args()
    if report_only(args, markdown_table):
        return

    records = RecordList(args.out)
    dataset = load_eurosat(args.data_dir)
    images = calibration_images(dataset, args.calibration_images)
    for model in args.models:
        run_model(model, args, records, dataset, images)
    if args.retime_rounds:  # the final timing pass; 0: leave it for later (--retime)
        retime(records, args.threads, args.retime_rounds, tuple(args.retime_threads))
    print(markdown_table(records.records))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
