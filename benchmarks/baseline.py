"""Baseline benchmark: train ResNet-18 and MobileNetV2 from scratch on EuroSAT 64x64.

Writes ``results/baseline.json``: one record per model in the shared schema, plus
``epochs``, ``wall_s``, ``train_img_per_s`` and a side-by-side throughput comparison
with a plain hand-written PyTorch loop (``plain_loop_img_per_s``).

Resumable: a finished model's record is kept and skipped on rerun; an interrupted
training run continues from its last checkpoint. Trained runs live outside the work tree
(``--runs-dir``, default ``~/.cache/satcompress/benchmarks``), keyed by their recipe
(``satcompress.experiments.keys``: a setting added later changes no key at its default).

    python benchmarks/baseline.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import satcompress as sc
from satcompress.config import ConfigError
from satcompress.experiments import (
    BASELINE_MODELS,
    RecordList,
    baseline_config,
    benchmark_parser,
    find_record_id,
    load_eurosat,
    report_only,
    train_and_evaluate,
)
from satcompress.preprocess import BatchAugment, Preprocess
from satcompress.report import ablation_table, format_table
from satcompress.train import resolve_input_spec


def config_for(model: str, args: argparse.Namespace) -> sc.TrainConfig:
    """The benchmark's recipe (``baseline_config``) plus any ``--recipe`` overrides."""
    return baseline_config(
        model,
        args.data_dir,
        epochs=args.epochs,
        threads=args.threads,
        recipe=getattr(args, "recipe", None) or [],
    )


def plain_loop_img_per_s(config: sc.TrainConfig, dataset, spec, batches: int) -> float:
    """A plain hand-written loop over the in-memory uint8 tensor: same model, batch size,
    threads, augmentation, optimiser, schedule (and EMA if on) as the satcompress run."""
    torch.manual_seed(0)
    model = sc.create_model(config.model, len(dataset.classes), **config.model_kwargs)
    model = model.to(memory_format=torch.channels_last)
    ema = None
    if config.ema_decay is not None:
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
    preprocess, augment = Preprocess(spec), BatchAugment(config.augment)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=batches)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    images, labels = dataset.splits["train"].images, dataset.splits["train"].labels
    order = torch.randperm(len(labels))
    model.train()
    start = time.perf_counter()
    for step in range(batches):
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        x = preprocess(augment(images[idx])).contiguous(memory_format=torch.channels_last)
        loss = criterion(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.update_parameters(model)
    return batches * config.batch_size / (time.perf_counter() - start)


def satcompress_img_per_s(config: sc.TrainConfig, dataset, batches: int) -> float:
    """The library's own training path (Lightning task + datamodule) over ``batches``."""
    quick = config.replace(epochs=1, limit_batches=batches)
    with tempfile.TemporaryDirectory() as tmp:
        result = sc.train(quick, Path(tmp) / "run", dataset=dataset, progress=False)
    return result.summary["train_img_per_s"]


def throughput(config: sc.TrainConfig, dataset, batches: int, rounds: int) -> dict:
    """Both loops, alternated ``rounds`` times so machine noise hits both alike."""
    spec = resolve_input_spec(config, dataset)
    plain_loop_img_per_s(config, dataset, spec, 5)  # warm-up: oneDNN primitive caches
    ours, plain = [], []
    for _ in range(rounds):
        ours.append(satcompress_img_per_s(config, dataset, batches))
        plain.append(plain_loop_img_per_s(config, dataset, spec, batches))
    best_ours, best_plain = max(ours), max(plain)
    return {
        "satcompress_img_per_s": round(best_ours, 2),
        "plain_loop_img_per_s": round(best_plain, 2),
        "ratio": round(best_ours / best_plain, 4),
        "batches": batches,
        "rounds": rounds,
        "all_satcompress": [round(v, 2) for v in ours],
        "all_plain_loop": [round(v, 2) for v in plain],
    }


def markdown_table(records: list[dict]) -> str:
    """The README's table, from the records of one results file."""
    rows = []
    for r in records:
        tp = r.get("throughput", {})
        per_epoch = sum(r["s_per_epoch"]) / max(1, len(r["s_per_epoch"]))
        ratio = (
            f"{tp['satcompress_img_per_s']:.0f} vs {tp['plain_loop_img_per_s']:.0f} "
            f"({tp['ratio']:.2f}x)"
            if tp
            else "-"
        )
        rows.append(
            (
                r["model"],
                f"{r['accuracy'] * 100:.2f}%",
                f"{r['params'] / 1e6:.2f} M",
                f"{r['macs'] / 1e6:.0f} M",
                f"{r['size_bytes']:,}",
                f"{r['latency_ms']['bs1']:.2f} / {r['latency_ms']['bs64']:.1f}",
                r["epochs"],
                f"{r['wall_s'] / 60:.0f} min",
                f"{per_epoch:.0f} s",
                f"{r['train_img_per_s']:.0f}",
                ratio,
            )
        )
    header = (
        "model",
        "test acc.",
        "params",
        "MACs",
        "fp32 ONNX bytes",
        "ORT bs1 / bs64 (ms)",
        "epochs",
        "wall",
        "s/epoch (train)",
        "train img/s",
        "vs plain loop",
    )
    return format_table(header, "lrrrrrrrrrr", rows, records)


def main() -> None:
    parser = benchmark_parser(__doc__, "results/baseline.json")
    parser.add_argument(
        "--models", nargs="+", default=list(BASELINE_MODELS), choices=list(BASELINE_MODELS)
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--throughput-batches", type=int, default=40)
    parser.add_argument("--throughput-rounds", type=int, default=2)
    parser.add_argument(
        "--recipe",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="ablation: override training settings (weight_decay=1e-4 augment.shift=4); "
        "use with its own --out, the plain-loop comparison is skipped",
    )
    parser.add_argument(
        "--ablation-table",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="print the README's table of training runs in these results files and exit",
    )
    args = parser.parse_args()
    if args.ablation_table:
        print(ablation_table(args.ablation_table))
        return
    if report_only(args, markdown_table):
        return

    try:
        configs = {model: config_for(model, args) for model in args.models}
    except ConfigError as error:
        parser.error(str(error))
    records = RecordList(args.out)
    dataset = load_eurosat(args.data_dir)
    for model, config in configs.items():
        key = find_record_id(records, "baseline", config)  # rows of earlier key rules too
        record = records.get_or_run(
            key, lambda c=config: train_and_evaluate(c, dataset, args.runs_dir)
        )
        if args.recipe:
            print(f"{model} ({' '.join(args.recipe)}): {record['accuracy'] * 100:.2f}%")
            continue
        if "plain_loop_img_per_s" not in record:
            numbers = throughput(config, dataset, args.throughput_batches, args.throughput_rounds)
            record.update(throughput=numbers, plain_loop_img_per_s=numbers["plain_loop_img_per_s"])
            records.put(record)
        print(
            f"{model}: test accuracy {record['accuracy'] * 100:.2f}% after {record['epochs']} "
            f"epochs, {record['wall_s'] / 60:.1f} min ({record['train_img_per_s']} img/s); "
            f"throughput vs plain loop {record['throughput']['ratio']:.3f}"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
