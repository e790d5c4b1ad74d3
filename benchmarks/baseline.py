"""Baseline benchmark: train ResNet-18 and MobileNetV2 from scratch on EuroSAT 64x64.

Writes ``results/baseline.json``: one record per model in the shared schema, plus
``epochs``, ``wall_s``, ``train_img_per_s`` and a side-by-side throughput comparison
with a plain hand-written PyTorch loop (``plain_loop_img_per_s``).

Resumable: a finished model's record is kept and skipped on rerun; an interrupted
training run continues from its last checkpoint. Trained runs live outside the work tree
(``--runs-dir``, default ``~/.cache/satcompress/benchmarks``), keyed by their config.

    python benchmarks/baseline.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import satcompress as sc
from satcompress.artifact.format import load_artifact
from satcompress.config import parse_value
from satcompress.evaluate import RecordList
from satcompress.evaluate.profile import (
    LatencyConfig,
    cpu_description,
    measure_latency_side_by_side,
)
from satcompress.preprocess import BatchAugment, Preprocess
from satcompress.train import resolve_input_spec

MODELS = {
    "resnet18": {},
    "mobilenet_v2": {},
}


def config_for(model: str, args: argparse.Namespace) -> sc.TrainConfig:
    """The benchmark's recipe: the library defaults, only model and data set here (plus any
    ``--recipe`` overrides of an ablation)."""
    config = sc.TrainConfig(
        model=model,
        model_kwargs=MODELS[model],
        dataset="eurosat",
        data_dir=str(args.data_dir),
        epochs=args.epochs,
        threads=args.threads,
    )
    return with_overrides(config, getattr(args, "recipe", None) or [])


def with_overrides(config: sc.TrainConfig, items: list[str]) -> sc.TrainConfig:
    """``config`` with ``KEY=VALUE`` overrides (YAML values; ``augment.shift=4`` for nested)."""
    values = config.to_dict()
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--recipe expects KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        target = values
        for part in parents:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict) or leaf not in target:
            raise SystemExit(f"--recipe: {key!r} is not a training setting")
        target[leaf] = parse_value(text)
    return sc.TrainConfig.from_dict(values)


# Settings added after results were recorded: at these (neutral) values they stay out of the
# key, so the committed records and cached runs keep theirs.
_LATER_SETTINGS = {
    "norm_bias_weight_decay": None,
    "augment": {"mixup": 0.0, "cutmix": 0.0, "mix_prob": 1.0},
}


def run_key(config: sc.TrainConfig) -> str:
    """Cache key of a training run: the recipe, without execution-only settings."""
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("threads", "num_workers")}
    for key, neutral in _LATER_SETTINGS.items():
        if isinstance(neutral, dict):
            recipe[key] = {
                k: v for k, v in recipe[key].items() if k not in neutral or v != neutral[k]
            }
        elif recipe.get(key, neutral) == neutral:
            recipe.pop(key, None)
    text = json.dumps(recipe, sort_keys=True)
    return f"{config.model}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def train_and_evaluate(config: sc.TrainConfig, dataset, runs_dir: Path) -> dict:
    run_dir = runs_dir / run_key(config)
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    if (run_dir / "model.safetensors").is_file() and (run_dir / "train_summary.json").is_file():
        loaded = sc.load_trained(run_dir)
        model, spec = loaded.model, loaded.input_spec
        summary = json.loads((run_dir / "train_summary.json").read_text())
    else:
        result = sc.train(config, run_dir, dataset=dataset, resume=resume)
        model, spec, summary = result.model, result.input_spec, result.summary
    record = sc.evaluate(
        model,
        dataset,
        spec,
        model_name=config.model,
        recipe={"stage": "train", **config.to_dict()},
        run_dir=run_dir,
    )
    record.update(
        epochs=config.epochs,
        wall_s=summary["wall_s"],
        s_per_epoch=summary["s_per_epoch"],
        train_img_per_s=summary["train_img_per_s"],
        best_val_accuracy=summary["best_val_accuracy"],
        run_dir=str(run_dir),
    )
    return record


def checkpoint_record(model: str, path: Path, dataset, onnx_dir: Path, **extra) -> dict:
    """The record of an already trained model (e.g. ``../shared/models``), not retrained.

    Other benchmarks take such a model as their dense/fp32 base (``--checkpoint MODEL=PATH``).
    Its ONNX file is kept in ``onnx_dir`` (``onnx_path``), to be timed again beside others.
    """
    trained = sc.load_trained(path)
    record = sc.evaluate(
        trained.model,
        dataset,
        trained.input_spec,
        model_name=model,
        recipe={"stage": "fp32", "checkpoint": str(path), "card": trained.card.get("recipe")},
        run_dir=onnx_dir,
        extra=extra,
    )
    record.update(run_dir=str(path), onnx_path=str(Path(onnx_dir) / "model.onnx"))
    return record


def given_checkpoints(items: list[str]) -> dict[str, Path]:
    """``MODEL=PATH`` arguments as a mapping (each path must exist)."""
    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            raise SystemExit(f"--checkpoint {item!r}: expected MODEL=PATH of an existing file")
        out[model] = Path(path)
    return out


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
    rows = [
        "| model | test acc. | params | MACs | fp32 ONNX bytes | ORT bs1 / bs64 (ms) "
        "| epochs | wall | s/epoch (train) | train img/s | vs plain loop |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
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
            f"| {r['model']} | {r['accuracy'] * 100:.2f}% | {r['params'] / 1e6:.2f} M "
            f"| {r['macs'] / 1e6:.0f} M | {r['size_bytes']:,} "
            f"| {r['latency_ms']['bs1']:.2f} / {r['latency_ms']['bs64']:.1f} | {r['epochs']} "
            f"| {r['wall_s'] / 60:.0f} min | {per_epoch:.0f} s | {r['train_img_per_s']:.0f} "
            f"| {ratio} |"
        )
    rows.append(cpu_line(records))
    return "\n".join(rows)


_NOT_RECIPE = ("model", "data_dir", "threads", "num_workers", "dataset", "stage")


def recipe_changes(recipe: dict, model: str) -> str:
    """How ``recipe`` differs from the library's default ``TrainConfig`` (dotted keys)."""
    default = sc.TrainConfig(model=model).to_dict()

    def flat(values: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in values.items():
            if isinstance(value, dict) and value and key != "model_kwargs":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    ours, base = flat(recipe), flat(default)
    changed = [
        f"{key}={ours[key]}"
        for key in sorted(ours)
        if key.split(".")[0] not in _NOT_RECIPE and ours[key] != base.get(key)
    ]
    return " ".join(changed) or "default"


def ablation_table(paths: list[Path]) -> str:
    """One row per training run of the given results files: what changed, val and test."""
    rows = [
        "| file | model | recipe (changes to the default) | best val | test acc. | MACs "
        "| epochs | wall | CPU |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for path in paths:
        for r in RecordList(path).records:
            cpu = cpu_label(r["latency"].get("cpu", {}))
            val = r.get("best_val_accuracy")
            rows.append(
                f"| `{path.name}` | {r['model']} | `{recipe_changes(r['recipe'], r['model'])}` "
                f"| {'-' if val is None else f'{val * 100:.2f}%'} | {r['accuracy'] * 100:.2f}% "
                f"| {r['macs'] / 1e6:.0f} M | {r['epochs']} | {r['wall_s'] / 60:.0f} min | {cpu} |"
            )
    return "\n".join(rows)


def cpu_label(cpu: dict) -> str:
    """Model and vector class of a record's CPU: two AMD EPYCs can be 3x apart."""
    flags = cpu.get("flags", [])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    model = cpu.get("model", "?")
    return f"{model} ({vector})" if vector else model


def cpu_line(records: list[dict]) -> str:
    """The line under a README table: the CPU the first record was measured on (figures
    from different CPUs are not comparable)."""
    cpu = records[0]["latency"].get("cpu", {}) if records else {}
    return f"\nCPU: {cpu.get('model')}, {cpu.get('cores')} cores, flags {cpu.get('flags')}."


def onnx_file(record: dict, tmp: Path) -> Path | None:
    """The ONNX model a record measured: its own file, its artifact rebuilt, or None."""
    for path in (record.get("onnx_path"), Path(record.get("run_dir", "")) / "model.onnx"):
        if path and Path(path).is_file():
            return Path(path)
    artifact = (record.get("artifact") or {}).get("path")
    if artifact and Path(artifact).is_file():
        return load_artifact(artifact).save_onnx(tmp / f"{record['id']}.onnx")
    return None


def retime(
    records: RecordList,
    threads: int | None,
    rounds: int = 3,
    extra_threads: tuple[int, ...] = (),
) -> None:
    """Time every record's ONNX model again, each model's variants interleaved in one pass.

    Rows are timed right after they are made, minutes or hours apart on a shared machine;
    this pass gives latencies (and speed-ups) that share one machine state.

    Args:
        records: The results file; every row whose ONNX file still exists is re-timed.
        threads: ORT intra-op threads of the record's ``latency_ms`` (``None``: all cores).
        rounds: Interleaved rounds per thread count.
        extra_threads: Further thread counts, timed after ``threads``. Every count lands in
            ``latency_by_threads`` (``{"<n>": {"bs1": ms, "bs64": ms}}``). On the 2-vCPU
            machines here 1 thread gave the steadier ratios (``latency-threads`` in
            ``results/diagnostics.json``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for record in records.records:
            path = onnx_file(record, Path(tmp))
            if path is None:
                print(f"{record['id']}: its ONNX file is gone, its latency is kept as it was")
            else:
                paths[record["id"]] = path
        for model in sorted({records.get(i)["model"] for i in paths}):
            group = {i: p for i, p in paths.items() if records.get(i)["model"] == model}
            size = tuple(records.get(next(iter(group)))["input"]["size"] or (64, 64))
            primary = threads or os.cpu_count() or 1  # what None means to the session
            for count in (primary, *(t for t in extra_threads if t != primary)):
                timings = measure_latency_side_by_side(
                    group, size, LatencyConfig(threads=count), rounds
                )
                for record_id, timing in timings.items():
                    _store_timing(records, record_id, timing, rounds, primary=count == primary)


def _store_timing(
    records: RecordList, record_id: str, timing: dict, rounds: int, primary: bool
) -> None:
    """Put one re-timing into its record: always ``latency_by_threads``, and the record's
    ``latency`` / ``latency_ms`` for the primary thread count."""
    record = records.get(record_id)
    medians = {k: v["median_ms"] for k, v in timing.items() if k[:2] == "bs"}
    by_threads = {} if primary else dict(record.get("latency_by_threads") or {})
    by_threads[str(timing["threads"])] = medians
    record["latency_by_threads"] = by_threads
    if primary:
        record.update(
            latency=timing,
            latency_ms=medians,
            latency_note=f"re-timed side by side, {rounds} interleaved rounds",
        )
    records.put(record)
    print(record_id, f"{timing['threads']} threads", medians)


def benchmark_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: data, results file, run cache, threads."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument(
        "--runs-dir", type=Path, default=Path.home() / ".cache" / "satcompress" / "benchmarks"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch/ORT threads")
    parser.add_argument("--table", action="store_true", help="print the README table and exit")
    parser.add_argument(
        "--retime", action="store_true", help="only re-time every row side by side, then exit"
    )
    parser.add_argument("--retime-rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument(
        "--retime-threads",
        type=int,
        nargs="*",
        default=[1],
        help="thread counts also timed by the re-timing pass (after --threads)",
    )
    return parser


def load_eurosat(data_dir: Path):
    """EuroSAT for a benchmark, with the split in use and the CPU printed (figures need both)."""
    dataset = sc.load_dataset("eurosat", data_dir)
    print(f"EuroSAT: {dataset.split_source}; CPU: {json.dumps(cpu_description())}")
    return dataset


def report_only(args: argparse.Namespace, table: Callable[[list[dict]], str]) -> bool:
    """``--table`` / ``--retime``: print (after re-timing) the README table; True if done."""
    if not (args.table or args.retime):
        return False
    records = RecordList(args.out)
    if args.retime:
        retime(records, args.threads, max(1, args.retime_rounds), tuple(args.retime_threads))
    print(table(records.records))
    return True


def main() -> None:
    parser = benchmark_parser(__doc__, "results/baseline.json")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
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

    records = RecordList(args.out)
    dataset = load_eurosat(args.data_dir)
    for model in args.models:
        config = config_for(model, args)
        key = f"baseline-{run_key(config)}"
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
